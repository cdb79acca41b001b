"""Optimizer policy: weight-decay groups, reset = a fresh AdamW, global-norm clipping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from replaylab.config import from_dict
from replaylab.model import Transformer
from replaylab.runconfig import ModelConfig, OptimConfig
from replaylab.train.optim import adamw_kwargs, build_optimizer, clip_gradients, param_groups, set_lr

torch.set_num_threads(1)


def tiny_model(tied: bool = False) -> Transformer:
    torch.manual_seed(0)
    return Transformer(
        ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, vocab_size=64, max_seq_len=16, tie_embeddings=tied)
    )


def names_by_group(model: nn.Module, cfg: OptimConfig) -> dict[str, set[str]]:
    ids = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: {ids[id(p)] for p in g["params"]} for g in param_groups(model, cfg)}


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, n: int) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(n):
        idx = torch.randint(0, 64, (2, 9), generator=gen)
        logits = model(idx[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, 64), idx[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def test_decay_on_matrices_only_untied_head_decays():
    model = tiny_model()
    groups = names_by_group(model, OptimConfig())
    assert groups["no_decay"] == {
        "tok_emb.weight",
        "norm.weight",
        "layers.0.attn_norm.weight",
        "layers.0.mlp_norm.weight",
    }
    assert "lm_head.weight" in groups["decay"]  # the untied head is a matrix like any projection
    assert groups["decay"] == {n for n, _ in model.named_parameters()} - groups["no_decay"]
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8), "cpu")
    assert [(g["name"], g["weight_decay"]) for g in opt.param_groups] == [("decay", 0.1), ("no_decay", 0.0)]
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8


def test_flags_move_norms_and_embeddings():
    model = tiny_model()
    g = names_by_group(model, OptimConfig(decay_norms=True))
    assert g["no_decay"] == {"tok_emb.weight"}
    g = names_by_group(model, OptimConfig(decay_embeddings=True))
    assert "tok_emb.weight" in g["decay"] and "norm.weight" in g["no_decay"]
    g = names_by_group(model, OptimConfig(decay_norms=True, decay_embeddings=True))
    assert set(g) == {"decay"}  # empty groups are left out


def test_tied_head_is_an_embedding():
    model = tiny_model(tied=True)
    assert "tok_emb.weight" in names_by_group(model, OptimConfig())["no_decay"]

    class Tied(nn.Module):  # a hand-written model: LayerNorm with bias, a head sharing the embedding
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.ln = nn.LayerNorm(4)
            self.proj = nn.Linear(4, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight

    g = names_by_group(Tied(), OptimConfig())
    assert g == {"decay": {"proj.weight"}, "no_decay": {"emb.weight", "ln.weight", "ln.bias", "proj.bias"}}


def test_weight_decay_really_applies_to_the_decay_group_only():
    model = tiny_model()
    opt = build_optimizer(model, OptimConfig(weight_decay=0.5), "cpu")
    set_lr(opt, 0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only decoupled weight decay moves weights
    opt.step()
    after = dict(model.named_parameters())
    assert torch.equal(after["tok_emb.weight"], before["tok_emb.weight"])
    assert torch.equal(after["norm.weight"], before["norm.weight"])
    assert torch.allclose(after["lm_head.weight"], before["lm_head.weight"] * (1 - 0.1 * 0.5))


def test_implementation_choice():
    # auto: fused kernels on CUDA, the multi-tensor path on CPU (what build_optimizer passes to AdamW)
    assert adamw_kwargs("auto", "cuda") == {"fused": True}
    assert adamw_kwargs("auto", torch.device("cpu")) == {"foreach": True, "fused": False}
    assert adamw_kwargs("auto", "cpu", torch.bfloat16) == {"fused": True}  # bf16 CPUs: fused (issue 22)
    assert adamw_kwargs("foreach", "cpu", torch.bfloat16) == {"foreach": True, "fused": False}
    assert adamw_kwargs("single", "cuda") == {"foreach": False, "fused": False}
    model = tiny_model()
    auto = build_optimizer(model, OptimConfig(), "cpu")
    assert auto.defaults["foreach"] is True and not auto.defaults["fused"]
    single = build_optimizer(model, OptimConfig(implementation="single"), torch.device("cpu"))
    assert single.defaults["foreach"] is False and not single.defaults["fused"]
    fused = build_optimizer(model, OptimConfig(implementation="fused"), "cpu")  # torch >= 2.4 has CPU kernels
    assert fused.defaults["fused"] is True
    # every implementation computes the same update (to float rounding)
    results = []
    for impl in ("single", "foreach", "fused"):
        m = tiny_model()
        opt = build_optimizer(m, OptimConfig(implementation=impl), "cpu")
        set_lr(opt, 1e-2)
        train_steps(m, opt, 2)
        results.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-6) and torch.allclose(results[0], results[2], atol=1e-6)


def test_reset_is_a_fresh_optimizer():
    model = tiny_model()
    opt = build_optimizer(model, OptimConfig(), "cpu")
    set_lr(opt, 1e-3)
    assert all(g["lr"] == 1e-3 for g in opt.param_groups)
    train_steps(model, opt, 3)
    state = opt.state[model.lm_head.weight]
    assert int(state["step"]) == 3 and state["exp_avg"].abs().sum() > 0
    fresh = build_optimizer(model, OptimConfig(), "cpu")  # what `optimizer: reset` does at a stage start
    assert len(fresh.state) == 0 and all(g["lr"] == 0.0 for g in fresh.param_groups)
    set_lr(fresh, 1e-3)
    model.zero_grad(set_to_none=True)
    logits = model(torch.arange(8).unsqueeze(0))
    logits.sum().backward()
    grad = model.lm_head.weight.grad.clone()
    fresh.step()
    s = fresh.state[model.lm_head.weight]
    assert int(s["step"]) == 1  # the step count restarted
    assert torch.allclose(s["exp_avg"], 0.1 * grad)  # moments restarted from zero: (1 - beta1) * g
    assert torch.allclose(s["exp_avg_sq"], 0.05 * grad * grad)
    # the carried optimizer, by contrast, still holds its history
    assert int(opt.state[model.lm_head.weight]["step"]) == 3


def test_clip_gradients():
    model = tiny_model()
    assert float(clip_gradients(model, 1.0)) == 0.0  # no gradients yet
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.01)
    total = sum(p.numel() for p in model.parameters())
    expect = 0.01 * total**0.5
    assert float(clip_gradients(model, 0.0)) == pytest.approx(expect, rel=1e-5)  # 0 = off: report only
    assert all(torch.all(p.grad == 0.01) for p in model.parameters())
    assert float(clip_gradients(model, 1.0)) == pytest.approx(expect, rel=1e-5)  # returns the norm before clipping
    after = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
    assert after == pytest.approx(1.0, rel=1e-4)
    assert float(clip_gradients(model, 10.0)) == pytest.approx(1.0, rel=1e-4)  # under the limit: untouched
    model.lm_head.weight.grad[0, 0] = float("inf")
    assert float(clip_gradients(model, 1.0)) == float("inf")


def test_config_round_trip():
    cfg = from_dict(OptimConfig, {"betas": [0.9, 0.99], "implementation": "foreach"})
    opt = build_optimizer(tiny_model(), cfg, "cpu")
    assert opt.defaults["betas"] == (0.9, 0.99)


def test_hugging_face_llama_groups():
    from transformers import LlamaConfig, LlamaForCausalLM

    for tied in (False, True):
        torch.manual_seed(0)
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=64,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
                num_key_value_heads=2,
                tie_word_embeddings=tied,
            )
        )
        g = names_by_group(model, OptimConfig())
        assert g["no_decay"] == {
            "model.embed_tokens.weight",
            "model.norm.weight",
            "model.layers.0.input_layernorm.weight",
            "model.layers.0.post_attention_layernorm.weight",
        }
        assert ("lm_head.weight" in g["decay"]) is not tied  # tied: the head *is* the embedding
        assert "model.layers.0.self_attn.q_proj.weight" in g["decay"]

"""The Llama-style model and the runtime helpers (device, precision, compile, threads)."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
import torch.nn.functional as F

from replaylab import runtime
from replaylab.config import from_dict
from replaylab.errors import ConfigError, ReplaylabError
from replaylab.model import Transformer, count_parameters, describe, parameter_counts
from replaylab.runconfig import MODEL_PRESETS, ModelConfig
from replaylab.train.loss import NextTokenLoss, build_step_loss, fuse_loss_by_default

torch.set_num_threads(1)


def cfg(**kw) -> ModelConfig:
    base = dict(d_model=32, n_layers=2, n_heads=4, d_ff=64, vocab_size=97, max_seq_len=16)
    return from_dict(ModelConfig, {**base, **kw})


def build(c: ModelConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(c)


def test_forward_shape_and_dtype():
    m = build(cfg())
    idx = torch.randint(0, 97, (3, 11))
    logits = m(idx)
    assert logits.shape == (3, 11, 97) and logits.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m(idx).dtype == torch.float32  # the loss always gets fp32 logits


def test_causal_masking_future_tokens_do_not_change_the_past():
    m = build(cfg())
    idx = torch.randint(0, 97, (2, 12))
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 5) % 97
    a, b = m(idx), m(changed)
    assert torch.equal(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_gqa_matches_multi_head_with_repeated_kv_heads():
    """A GQA model equals a multi-head model whose k/v heads are copies of the shared ones."""
    g = build(cfg(n_kv_heads=2))
    mh = build(cfg())
    hd, nh, nkv, d = 8, 4, 2, 32
    with torch.no_grad():
        for lg, lm in zip(g.layers, mh.layers):
            q, k, v = lg.attn.wqkv.weight.split([nh * hd, nkv * hd, nkv * hd])
            rep = lambda w: w.view(nkv, hd, d).repeat_interleave(nh // nkv, dim=0).reshape(nh * hd, d)  # noqa: E731
            lm.attn.wqkv.weight.copy_(torch.cat([q, rep(k), rep(v)]))
            lm.attn.wo.weight.copy_(lg.attn.wo.weight)
            lm.mlp.load_state_dict(lg.mlp.state_dict())
        for name in ("tok_emb", "norm", "lm_head"):
            getattr(mh, name).load_state_dict(getattr(g, name).state_dict())
    idx = torch.randint(0, 97, (2, 10))
    torch.testing.assert_close(g(idx), mh(idx), rtol=0, atol=1e-5)
    assert g.layers[0].attn.wqkv.weight.shape == ((4 + 2 * 2) * 8, 32)


def test_tied_embeddings_share_one_tensor():
    m = build(cfg(tie_embeddings=True))
    assert m.lm_head is None and "lm_head.weight" not in m.state_dict()
    logits = m(torch.tensor([[1, 2, 3]]))
    logits[0, -1, 5].backward()
    assert m.tok_emb.weight.grad[5].abs().sum() > 0  # the output row of token 5 is its embedding row
    assert count_parameters(m)["total"] == parameter_counts(m.cfg)["total"]


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("kv", [None, 2])
def test_parameter_counts_by_hand(tied, kv):
    c = cfg(tie_embeddings=tied, n_kv_heads=kv)
    nkv = kv or 4
    # per layer: q (32x32) + k, v (32 x nkv*8 each) + o (32x32) + gate, up, down (32x64 each) + 2 norms
    layer = 32 * 32 + 2 * 32 * nkv * 8 + 32 * 32 + 3 * 32 * 64 + 2 * 32
    non_emb = 2 * layer + 32
    total = non_emb + 97 * 32 * (1 if tied else 2)
    assert parameter_counts(c) == {"total": total, "non_embedding": non_emb}
    assert count_parameters(build(c)) == {"total": total, "non_embedding": non_emb}


def test_paper_150m_preset_counts():
    c = from_dict(ModelConfig, {"preset": "150m", "vocab_size": 128256})
    c.max_seq_len = 4096
    counts = parameter_counts(c)
    # 6 x (4*512^2 + 3*512*1792 + 2*512) + 512 non-embedding; 2 x 128256 x 512 embeddings: the paper's ~154M.
    assert counts["non_embedding"] == 6 * (4 * 512**2 + 3 * 512 * 1792 + 1024) + 512 == 22_813_184
    assert counts["total"] == 22_813_184 + 2 * 128256 * 512
    line = describe(c)
    assert "154.15M params" in line and "22.81M non-embedding" in line and "\n" not in line


def test_every_preset_validates_and_describes():
    for name in MODEL_PRESETS:
        c = from_dict(ModelConfig, {"preset": name, "vocab_size": 4096})
        c.max_seq_len = c.max_seq_len or 256
        assert "params" in describe(c)


def test_init_is_deterministic_and_seed_dependent():
    a, b, c = build(cfg(), 0), build(cfg(), 0), build(cfg(), 1)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.tok_emb.weight, c.tok_emb.weight)
    w = build(cfg(d_model=256, d_ff=512, vocab_size=512)).layers[0].mlp.w_down.weight
    assert abs(w.std().item() - 0.02) < 0.001  # flat 0.02, no depth scaling
    assert torch.equal(a.layers[0].attn_norm.weight, torch.ones(32))


def test_training_steps_reduce_loss():
    m = build(cfg())
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    idx = torch.randint(0, 97, (4, 16))
    losses = []
    for _ in range(20):
        logits = m(idx[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 97), idx[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0


def test_unresolved_or_bad_config_is_a_clear_error():
    with pytest.raises(ConfigError, match="vocab_size must be resolved"):
        Transformer(ModelConfig())
    with pytest.raises(ConfigError, match="divisible by model.n_kv_heads"):
        Transformer(cfg(n_kv_heads=3))
    with pytest.raises(ConfigError, match="exceeds model.max_seq_len 16"):
        build(cfg())(torch.zeros(1, 17, dtype=torch.long))


def test_runtime_resolution():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    assert runtime.resolve_device("auto").type in ("cpu", "cuda")
    assert runtime.resolve_precision("fp32", "cpu") is None
    expected = torch.bfloat16 if runtime.cpu_has_native_bf16() else None
    assert runtime.resolve_precision("auto", "cpu") is expected
    with pytest.raises(ReplaylabError, match="train.precision 'fp16'"):
        runtime.resolve_precision("fp16", "cpu")
    with pytest.raises(ReplaylabError, match="train.device 'tpu'"):
        runtime.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ReplaylabError, match="no CUDA GPU"):
            runtime.resolve_device("cuda")
    before = torch.get_num_threads()
    assert runtime.set_threads(1) == 1
    assert runtime.set_threads(None) == 1
    torch.set_num_threads(before)
    with pytest.raises(ReplaylabError, match="threads must be >= 1"):
        runtime.set_threads(0)


def test_compile_falls_back_to_eager_without_a_cxx_compiler(monkeypatch, tmp_path):
    """A machine without g++/clang++ (inductor needs one on CPU): auto warns and runs eager, on errors."""
    monkeypatch.setenv("PATH", str(tmp_path))
    m = build(cfg(n_layers=1))
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        assert runtime.maybe_compile(m, "auto", example=torch.zeros(1, 4, dtype=torch.long)) is m
    with pytest.raises(ReplaylabError, match="train.compile=on but torch.compile does not work here"):
        runtime.maybe_compile(m, "on")
    with pytest.raises(ReplaylabError, match="train.compile 'yes'"):
        runtime.maybe_compile(m, "yes")


def test_next_token_loss_is_the_shifted_cross_entropy():
    m = build(cfg())
    tokens = torch.randint(0, 97, (3, 12))
    want = F.cross_entropy(m(tokens[:, :-1]).reshape(-1, 97), tokens[:, 1:].reshape(-1))
    assert torch.equal(NextTokenLoss(m)(tokens), want)


@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_written_out_attention_is_sdpas_math(n_kv_heads):
    m = build(cfg(n_kv_heads=n_kv_heads))
    idx = torch.randint(0, 97, (2, 9))
    want = m(idx)
    m.write_out_attention()
    assert all(layer.attn.written_out for layer in m.layers)
    torch.testing.assert_close(m(idx), want, rtol=1e-5, atol=1e-5)
    m.write_out_attention(False)
    assert torch.equal(m(idx), want)  # SDPA again, bit for bit


def test_attention_is_written_out_only_where_compiled_under_bf16_on_a_cpu():
    assert runtime.written_out_attention("cpu", torch.bfloat16, "auto")
    assert runtime.written_out_attention("cpu", torch.bfloat16, "on")
    assert not runtime.written_out_attention("cpu", torch.bfloat16, "off")  # eager bf16 (the demo) keeps SDPA
    assert not runtime.written_out_attention("cpu", None, "auto")  # fp32 CPUs keep their recorded numbers
    assert not runtime.written_out_attention("cuda", torch.bfloat16, "auto")  # GPUs keep the fused kernels


def test_the_loss_is_compiled_with_the_model_on_gpus_and_under_bf16_autocast_only():
    # GPUs: the fp32 logits are never stored; bf16 CPUs: speed (issue 22); fp32 CPUs keep their recorded graph.
    assert fuse_loss_by_default(torch.device("cuda"), torch.bfloat16)
    assert fuse_loss_by_default(torch.device("cuda"), None)
    assert fuse_loss_by_default(torch.device("cpu"), torch.bfloat16)
    assert not fuse_loss_by_default(torch.device("cpu"), None)


@pytest.mark.slow  # a cold inductor compile of forward + backward: 20-120 s on 2 busy cores
def test_compile_works_or_falls_back_and_matches_eager():
    # The GPU path (model + loss compiled as one graph), run here on the CPU: same loss and gradients.
    tokens = torch.randint(0, 97, (2, 12))
    eager, m = build(cfg(n_layers=1)), build(cfg(n_layers=1))
    want = NextTokenLoss(eager)(tokens)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # where compile is unavailable "auto" falls back to eager
        step_loss = build_step_loss(m, "auto", tokens, None, fuse=True)
    assert runtime.unwrap(step_loss).model is m
    assert all(p.grad is None for p in m.parameters())  # the compile trial left no gradients behind
    got = step_loss(tokens)
    want.backward()
    got.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(eager.named_parameters(), m.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert runtime.maybe_compile(m, "off") is m


def test_deterministic_attention_picks_the_math_kernel_on_cuda_only():
    assert isinstance(runtime.deterministic_attention("cpu", True), contextlib.nullcontext)
    assert isinstance(runtime.deterministic_attention("cuda", False), contextlib.nullcontext)
    m = build(cfg())
    idx = torch.randint(0, 97, (2, 9))
    with runtime.deterministic_attention("cuda", True):  # math-only attention; runs on a CPU too
        restricted = m(idx)
    torch.testing.assert_close(restricted, m(idx), rtol=1e-5, atol=1e-5)


def test_written_out_attention_keeps_packed_documents_apart():
    """Packed rows (positions and segments, data/rows.py) under the written-out attention: the same as SDPA with
    the document mask, so compiling a bf16 CPU run never lets one example attend to another."""
    m = build(cfg())
    idx = torch.randint(0, 97, (2, 10))
    segments = torch.tensor([[0] * 4 + [1] * 6, [0] * 7 + [1] * 3])
    positions = torch.cat([torch.arange(4), torch.arange(6)]).expand(2, -1).clone()
    positions[1] = torch.cat([torch.arange(7), torch.arange(3)])
    want = m(idx, positions, segments)
    m.write_out_attention()
    torch.testing.assert_close(m(idx, positions, segments), want, rtol=1e-5, atol=1e-5)

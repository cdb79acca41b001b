"""Hugging Face bridge: our Transformer <-> `LlamaForCausalLM` checkpoints.

The architectures are identical (same RMSNorm, SwiGLU, RoPE convention), so conversion is a pure
weight copy plus one layout change: we fuse q/k/v into `wqkv` and gate/up into `w_gate_up`, HF keeps
them as separate projections. Name map (layer i):

    tok_emb.weight                    <-> model.embed_tokens.weight
    layers.i.attn_norm.weight         <-> model.layers.i.input_layernorm.weight
    layers.i.attn.wqkv.weight         <-> model.layers.i.self_attn.{q,k,v}_proj.weight (concatenated)
    layers.i.attn.wo.weight           <-> model.layers.i.self_attn.o_proj.weight
    layers.i.mlp_norm.weight          <-> model.layers.i.post_attention_layernorm.weight
    layers.i.mlp.w_gate_up.weight     <-> model.layers.i.mlp.{gate,up}_proj.weight (concatenated)
    layers.i.mlp.w_down.weight        <-> model.layers.i.mlp.down_proj.weight
    norm.weight                       <-> model.norm.weight
    lm_head.weight                    <-> lm_head.weight (absent when embeddings are tied)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from replaylab.errors import ReplaylabError
from replaylab.runconfig import ModelConfig

_LAYER_DIRECT = {  # ours -> HF, inside one layer
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.w_down.weight": "mlp.down_proj.weight",
}
_TOP_DIRECT = {
    "tok_emb.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}


class HFConvertError(ReplaylabError):
    """A checkpoint cannot be converted to or from the Hugging Face Llama format."""


def _shapes(cfg: ModelConfig) -> tuple[int, int, int]:
    hd = cfg.d_model // cfg.n_heads
    return cfg.n_heads * hd, (cfg.n_kv_heads or cfg.n_heads) * hd, cfg.d_ff


def to_hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our parameter names and fused layout -> HF Llama's."""
    q_dim, kv_dim, d_ff = _shapes(cfg)
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}  # a compiled model's state dict
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if name in _TOP_DIRECT:
            out[_TOP_DIRECT[name]] = t
            continue
        _, i, rest = name.split(".", 2)
        pre = f"model.layers.{i}."
        if rest == "attn.wqkv.weight":
            q, k, v = t.split([q_dim, kv_dim, kv_dim])
            out[pre + "self_attn.q_proj.weight"], out[pre + "self_attn.k_proj.weight"] = q, k
            out[pre + "self_attn.v_proj.weight"] = v
        elif rest == "mlp.w_gate_up.weight":
            gate, up = t.split([d_ff, d_ff])
            out[pre + "mlp.gate_proj.weight"], out[pre + "mlp.up_proj.weight"] = gate, up
        else:
            out[pre + _LAYER_DIRECT[rest]] = t
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def from_hf_state_dict(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF Llama names -> ours (fusing q/k/v and gate/up). Errors name any missing tensor."""

    def take(key: str) -> torch.Tensor:
        if key not in hf:
            raise HFConvertError(f"Hugging Face checkpoint lacks tensor {key!r}; is it a complete LlamaForCausalLM?")
        return hf[key]

    out = {"tok_emb.weight": take("model.embed_tokens.weight"), "norm.weight": take("model.norm.weight")}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = take("lm_head.weight")
    for i in range(cfg.n_layers):
        pre = f"model.layers.{i}."
        for ours, theirs in _LAYER_DIRECT.items():
            out[f"layers.{i}.{ours}"] = take(pre + theirs)
        out[f"layers.{i}.attn.wqkv.weight"] = torch.cat(
            [take(pre + f"self_attn.{p}_proj.weight") for p in ("q", "k", "v")]
        )
        out[f"layers.{i}.mlp.w_gate_up.weight"] = torch.cat(
            [take(pre + "mlp.gate_proj.weight"), take(pre + "mlp.up_proj.weight")]
        )
    return out


def hf_config(cfg: ModelConfig, *, eos_token_id: int | None = None):
    """The `transformers.LlamaConfig` of our model shape."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads or cfg.n_heads,
        head_dim=cfg.d_model // cfg.n_heads,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=None,
        eos_token_id=eos_token_id,
        pad_token_id=None,
        architectures=["LlamaForCausalLM"],
    )


def _eos_token(tokenizer_file: Path, eos_id: int | None) -> str | None:
    from tokenizers import Tokenizer

    if eos_id is None:
        from replaylab.data.tokenizer import get_tokenizer

        eos_id = get_tokenizer(str(tokenizer_file.parent)).eos_id
    return Tokenizer.from_file(str(tokenizer_file)).id_to_token(eos_id)


def export_hf(
    model_or_state_dict: torch.nn.Module | dict[str, torch.Tensor],
    cfg: ModelConfig,
    tokenizer_dir: str | Path | None,
    out_dir: str | Path,
    *,
    eos_id: int | None = None,
    identity: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `out_dir` as a Hugging Face Llama checkpoint (safetensors, fp32 as trained), plus the
    tokenizer as a PreTrainedTokenizerFast when `tokenizer_dir` (a folder with tokenizer.json) is
    given. Built in a temp folder and renamed into place: never half-written. `eos_id` defaults to
    the tokenizer's EOS as `replaylab.data.tokenizer` finds it. `out_dir` is new, or an export of replaylab's
    of the same `identity` (e.g. run + step), or of another one with `overwrite` (replaylab.outputs)."""
    from safetensors.torch import save_file

    from replaylab.outputs import build_output

    state = (
        model_or_state_dict.state_dict() if isinstance(model_or_state_dict, torch.nn.Module) else model_or_state_dict
    )
    hf_state = to_hf_state_dict(state, cfg)
    tok_file = None
    if tokenizer_dir is not None:
        tok_file = Path(tokenizer_dir)
        tok_file = tok_file / "tokenizer.json" if tok_file.is_dir() else tok_file
        if not tok_file.is_file():
            raise HFConvertError(f"tokenizer {str(tokenizer_dir)!r} has no tokenizer.json; give the tokenizer's folder")
    eos_token = _eos_token(tok_file, eos_id) if tok_file else None
    if tok_file is not None and eos_id is None:
        from tokenizers import Tokenizer

        eos_id = Tokenizer.from_file(str(tok_file)).token_to_id(eos_token)
    with build_output(
        out_dir, "export", identity, overwrite=overwrite, option="--hf", describe="of another checkpoint"
    ) as tmp:
        hf_config(cfg, eos_token_id=eos_id).save_pretrained(tmp)
        save_file(hf_state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tok_file is not None:
            from transformers import PreTrainedTokenizerFast

            tok = PreTrainedTokenizerFast(
                tokenizer_file=str(tok_file), eos_token=eos_token, model_max_length=cfg.max_seq_len
            )
            tok.save_pretrained(tmp)
    return Path(out_dir)


def _resolve_folder(path: str) -> Path:
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder
    if os.path.exists(folder) or path.count("/") != 1 or path.startswith((".", "/", "~")):
        raise HFConvertError(
            f"Hugging Face checkpoint {path!r} is not a folder; give a folder holding config.json "
            "and model.safetensors (e.g. one written by `replaylab export`)"
        )
    try:  # org/name: a hub id, fetched into the HF cache (needs network or a warm cache)
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.model"]))
    except Exception as e:
        raise HFConvertError(
            f"Hugging Face checkpoint {path!r} is neither a local folder nor downloadable "
            f"({type(e).__name__}); download it first and give its folder"
        ) from None


def _read_hf_config(folder: Path) -> dict[str, Any]:
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise HFConvertError(f"{str(folder)!r} has no config.json; give a Hugging Face model folder")
    raw = json.loads(cfg_file.read_text())
    archs = raw.get("architectures") or []
    if raw.get("model_type") != "llama" or (archs and "LlamaForCausalLM" not in archs):
        raise HFConvertError(
            f"{str(folder)!r} is a {raw.get('model_type')!r} model ({', '.join(archs) or 'no architectures'}); "
            "only Llama checkpoints (model_type 'llama', LlamaForCausalLM) can initialise replaylab's model"
        )
    return raw


def _model_fields(raw: dict[str, Any]) -> dict[str, Any]:
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise HFConvertError(f"this Llama uses RoPE scaling {rope_type!r}; replaylab's model supports plain RoPE only")
    theta = rope.get("rope_theta", raw.get("rope_theta", 10000.0))
    d, nh = raw["hidden_size"], raw["num_attention_heads"]
    if raw.get("head_dim") not in (None, d // nh):
        raise HFConvertError(
            f"head_dim {raw['head_dim']} != hidden_size / num_attention_heads ({d // nh}); not supported"
        )
    if raw.get("attention_bias") or raw.get("mlp_bias") or raw.get("hidden_act", "silu") != "silu":
        raise HFConvertError(
            "this Llama has attention/MLP biases or a non-SiLU activation; replaylab's model has neither"
        )
    nkv = raw.get("num_key_value_heads") or nh
    return dict(
        d_model=d,
        n_layers=raw["num_hidden_layers"],
        n_heads=nh,
        n_kv_heads=None if nkv == nh else nkv,
        d_ff=raw["intermediate_size"],
        vocab_size=raw["vocab_size"],
        max_seq_len=raw.get("max_position_embeddings"),
        rope_theta=float(theta),
        norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        init_std=float(raw.get("initializer_range", 0.02)),
    )


def _read_hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    elif (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise HFConvertError(f"{str(folder)!r} holds no model.safetensors, sharded index or pytorch_model.bin")
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        tensors.update(load_file(str(folder / shard)))
    return tensors


def import_hf(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a HF Llama checkpoint folder (or hub id) -> (ModelConfig fields, our fp32 state dict)."""
    folder = _resolve_folder(str(path))
    fields = _model_fields(_read_hf_config(folder))
    state = from_hf_state_dict(_read_hf_tensors(folder), ModelConfig(**fields))
    return fields, {k: v.float().contiguous() for k, v in state.items()}

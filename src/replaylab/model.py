"""The Llama-style decoder that every replaylab run trains.

Same architecture as the paper's Levanter "150m4k" Llama and as Hugging Face `LlamaForCausalLM`:
pre-norm blocks with RMSNorm, rotary position embeddings (RoPE, HF's non-interleaved
`rotate_half` convention), multi-head or grouped-query attention through
`F.scaled_dot_product_attention(is_causal=True)`, a SwiGLU MLP, and untied input/output embeddings
by default. Because the math and the RoPE convention match HF exactly, exporting to HF is a pure
weight copy (see `replaylab.hf_convert`); the only layout difference is that we fuse q/k/v into one
projection and gate/up into another (one matmul instead of three or two: faster on small CPU models).

Initialisation: every Linear and the embedding ~ N(0, init_std) (0.02 by default), norms at 1. We do
NOT depth-scale the output projections (o_proj, down_proj): the paper's Levanter Llama and HF Llama
both use a flat 0.02, and matching the paper's model matters more here than the small stability gain
of GPT-2-style scaling. Init is a pure function of `torch.manual_seed` (modules are initialised in
construction order).

Parameter names (what `replaylab.hf_convert` maps to HF's): `tok_emb.weight` (embedding),
`lm_head.weight` (absent when tied), `*norm.weight` (RMSNorm gains), everything else is a matrix.
Weight-decay groups go by module type, not by these names (train/optim.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from replaylab.errors import ConfigError
from replaylab.runconfig import ModelConfig


def _check_resolved(cfg: ModelConfig) -> tuple[int, int]:
    if not isinstance(cfg.vocab_size, int) or cfg.vocab_size < 1:
        raise ConfigError(
            f"model.vocab_size must be resolved to a positive int before building the model, got {cfg.vocab_size!r}"
        )
    if not isinstance(cfg.max_seq_len, int) or cfg.max_seq_len < 1:
        raise ConfigError(
            f"model.max_seq_len must be resolved to a positive int before building the model, got {cfg.max_seq_len!r}"
        )
    cfg.validate()
    return cfg.vocab_size, cfg.max_seq_len


def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (max_seq_len, head_dim), computed in fp32 exactly as HF Llama's default RoPE."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))  # (hd/2,)
    t = torch.arange(max_seq_len, dtype=torch.int64).float()
    freqs = torch.outer(t, inv_freq)  # (T, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, hd): non-interleaved halves, HF convention
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, nh, T, hd); cos/sin: (T, hd)."""
    return x * cos.to(x.dtype) + _rotate_half(x) * sin.to(x.dtype)


def written_out_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd) + causal mask) v as plain matmuls (q, k, v: (B, nh, T, hd)), the math of
    `F.scaled_dot_product_attention(is_causal=True)` (or of `attn_mask=mask` for packed documents, `mask` from
    `document_mask`) and of HF's eager attention. Compiled on a CPU under bf16
    autocast, inductor fuses the mask and softmax and its backward runs ~2x faster at our small shapes than SDPA's
    CPU flash kernel, whose backward was the largest item of the step (issue 22: runtime.written_out_attention)."""
    T = q.size(-2)
    scores = (q * q.size(-1) ** -0.5) @ k.transpose(-2, -1)  # (B, nh, T, T)
    allowed = torch.ones(T, T, dtype=torch.bool, device=q.device).tril() if mask is None else mask
    return scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1).to(v.dtype) @ v  # (B, nh, T, hd)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.written_out = False  # Transformer.write_out_attention
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads or cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        # One fused projection for q, k and v: (d_model) -> (n_heads + 2 * n_kv_heads) * head_dim.
        self.wqkv = nn.Linear(cfg.d_model, (self.n_heads + 2 * self.n_kv_heads) * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, cfg.d_model, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, T, _ = x.shape
        hd, nh, nkv = self.head_dim, self.n_heads, self.n_kv_heads
        q, k, v = self.wqkv(x).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
        q = q.view(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(B, T, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if nkv != nh:
            # GQA: kv head j serves query heads j*rep .. (j+1)*rep-1 (HF's repeat_kv layout).
            rep = nh // nkv
            k = k.repeat_interleave(rep, dim=1)  # (B, nh, T, hd)
            v = v.repeat_interleave(rep, dim=1)
        if self.written_out:
            y = written_out_causal_attention(q, k, v, mask)
        elif mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hd)
        else:  # packed documents: causal and inside one document (`document_mask`)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, nh * hd)  # (B, T, d_model)
        return self.wo(y)


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.d_ff = cfg.d_ff
        self.w_gate_up = nn.Linear(cfg.d_model, 2 * cfg.d_ff, bias=False)  # gate and up, fused
        self.w_down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w_gate_up(x).split(self.d_ff, dim=-1)  # (B, T, d_ff) each
        return self.w_down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask)
        return x + self.mlp(self.mlp_norm(x))


def document_mask(segments: torch.Tensor) -> torch.Tensor:
    """Boolean attention mask (B, 1, T, T) for rows of packed documents: query t sees key s when s <= t and both
    belong to the same document (`segments` (B, T), equal ids = one document; see `replaylab.data.rows`)."""
    T = segments.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()  # (T, T)
    same = segments[:, :, None] == segments[:, None, :]  # (B, T, T)
    return (same & causal).unsqueeze(1)


class Transformer(nn.Module):
    """`forward(idx: LongTensor[B, T]) -> float32 logits[B, T, vocab_size]`, T <= max_seq_len.

    Packed documents (instruction rows, `replaylab.data.rows`): pass `positions` (B, T), the RoPE position of each
    token (restarting at 0 per document), and `segments` (B, T), which document each token belongs to; attention then
    never crosses documents (`document_mask`). Without them the model is exactly the plain causal decoder."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        vocab, max_len = _check_resolved(cfg)
        self.cfg = cfg
        self.tok_emb = nn.Embedding(vocab, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        # Tied: the output projection reuses tok_emb.weight, so no lm_head parameter exists (and the
        # state dict has no shared tensors, which safetensors refuses).
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, vocab, bias=False)
        cos, sin = rope_tables(cfg.d_model // cfg.n_heads, max_len, cfg.rope_theta)
        # Not persistent: derived from the config, so checkpoints hold only learned weights.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        for module in self.modules():  # construction order: deterministic under torch.manual_seed
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)

    def forward(
        self, idx: torch.Tensor, positions: torch.Tensor | None = None, segments: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.hidden(idx, positions, segments)
        # Through the lm_head module when untied, so module swaps (torchao's float8 Linear, say) reach it too.
        logits = F.linear(x, self.tok_emb.weight) if self.lm_head is None else self.lm_head(x)
        return logits.float()  # (B, T, vocab), fp32 even under autocast: the loss needs it

    def write_out_attention(self, on: bool = True) -> None:
        """Attend with `written_out_causal_attention` instead of SDPA (same math, other rounding): where
        runtime.written_out_attention says it is faster."""
        for module in self.modules():
            if isinstance(module, Attention):
                module.written_out = on

    def output_weight(self) -> torch.Tensor:
        """The output projection's (vocab, d_model) matrix: lm_head's, or the input embedding when tied."""
        return self.tok_emb.weight if self.lm_head is None else self.lm_head.weight

    def hidden(
        self, idx: torch.Tensor, positions: torch.Tensor | None = None, segments: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The final normed hidden states (B, T, d_model) that the output projection turns into logits (a
        fused linear cross-entropy kernel takes these and `output_weight()` instead of the logits)."""
        B, T = idx.shape
        if T > self.rope_cos.shape[0]:
            raise ConfigError(
                f"sequence length {T} exceeds model.max_seq_len {self.rope_cos.shape[0]}; raise model.max_seq_len"
            )
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]  # (T, hd)
        mask = None
        if positions is not None:
            cos, sin = self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1)  # (B, 1, T, hd)
        if segments is not None:
            mask = document_mask(segments)  # (B, 1, T, T)
        x = self.tok_emb(idx)  # (B, T, d_model)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.norm(x)


def parameter_counts(cfg: ModelConfig) -> dict[str, int]:
    """Counts from the config alone (no allocation: works for the 1b preset too).

    non_embedding excludes the input embedding and the output projection (the paper's ~154M for
    `150m` counts both embeddings; its 22.8M non-embedding part is what scales with depth)."""
    vocab, _ = _check_resolved(cfg)
    d, hd = cfg.d_model, cfg.d_model // cfg.n_heads
    nkv = cfg.n_kv_heads or cfg.n_heads
    attn = d * (cfg.n_heads + 2 * nkv) * hd + cfg.n_heads * hd * d
    mlp = 3 * d * cfg.d_ff
    per_layer = attn + mlp + 2 * d  # + two RMSNorm gains
    non_embedding = cfg.n_layers * per_layer + d  # + final norm
    embedding = vocab * d * (1 if cfg.tie_embeddings else 2)
    return {"total": non_embedding + embedding, "non_embedding": non_embedding}


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Counts from a built model (unique tensors, so tied weights count once)."""
    base = getattr(model, "_orig_mod", model)  # a torch.compile wrapper
    total = sum(p.numel() for p in base.parameters())
    emb = base.tok_emb.weight.numel()
    if base.lm_head is not None:
        emb += base.lm_head.weight.numel()
    return {"total": total, "non_embedding": total - emb}


def _fmt(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def describe(cfg: ModelConfig) -> str:
    """One line: shape and parameter counts."""
    counts = parameter_counts(cfg)
    nkv = cfg.n_kv_heads or cfg.n_heads
    heads = f"{cfg.n_heads} heads" + (f" ({nkv} kv)" if nkv != cfg.n_heads else "")
    name = f"{cfg.preset} " if cfg.preset else ""
    return (
        f"Llama {name}d_model {cfg.d_model}, {cfg.n_layers} layers, {heads}, d_ff {cfg.d_ff}, "
        f"vocab {cfg.vocab_size}, seq {cfg.max_seq_len}{', tied' if cfg.tie_embeddings else ''}: "
        f"{_fmt(counts['total'])} params ({_fmt(counts['non_embedding'])} non-embedding)"
    )

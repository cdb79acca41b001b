"""Per-document packing: no attention across packed examples, on our model and on a tiny random HF Llama.

A packed row's summed loss must equal the sum of each example's loss computed alone (the example as its own,
unpacked sequence): then no token saw another example, and positions restarted per example."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from replaylab.config import from_dict
from replaylab.data.rows import DocumentRows, layout
from replaylab.model import Transformer
from replaylab.runconfig import ModelConfig

torch.set_num_threads(1)


def _examples(seed: int = 0, lengths=(5, 9, 3, 7)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 97, (n,), generator=g) for n in lengths]


def _packed(examples: list[torch.Tensor], width: int):
    """One row: the examples back to back, then padding (token 0, a segment of its own)."""
    tokens = torch.zeros(width, dtype=torch.long)
    positions = torch.zeros(width, dtype=torch.long)
    segments = torch.zeros(width, dtype=torch.long)
    at = 0
    for s, e in enumerate(examples):
        tokens[at : at + len(e)] = e
        positions[at : at + len(e)] = torch.arange(len(e))
        segments[at : at + len(e)] = s
        at += len(e)
    positions[at:] = torch.arange(width - at)
    segments[at:] = len(examples)
    labels = tokens.clone()
    starts = torch.zeros(width, dtype=torch.bool)
    starts[positions == 0] = True
    labels[starts] = -100  # a document's first token is predicted by nothing in the row
    labels[segments == len(examples)] = -100
    return tokens[None], positions[None], segments[None], labels[None]


def _sum_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token loss of logits (1, T, V) against labels (1, T) (HF convention: shift inside)."""
    return F.cross_entropy(logits[0, :-1].float(), labels[0, 1:], ignore_index=-100, reduction="sum")


def _alone(forward, examples) -> torch.Tensor:
    return sum(_sum_loss(forward(e[None]), e[None]) for e in examples)


def test_our_model_packed_row_loss_equals_examples_alone():
    cfg = from_dict(
        ModelConfig, dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, vocab_size=97, max_seq_len=32)
    )
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    examples = _examples()
    tokens, positions, segments, labels = _packed(examples, 28)
    with torch.no_grad():
        packed = _sum_loss(model(tokens, positions, segments), labels)
        alone = _alone(model, examples)
        leaky = _sum_loss(model(tokens), labels)  # today's stream packing: examples attend to each other
    assert torch.allclose(packed, alone, rtol=1e-5, atol=1e-5), (packed, alone)
    assert not torch.allclose(leaky, alone, rtol=1e-3), "the check would not see cross-example attention"


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_hf_llama_padding_free_rows_equal_examples_alone(attn):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attn_implementation=attn,
    )
    model = LlamaForCausalLM(cfg).eval()
    examples = _examples(1)
    tokens, positions, _, labels = _packed(examples, 28)

    def forward(ids, **kw):
        return model(input_ids=ids, use_cache=False, **kw).logits

    with torch.no_grad():
        # The padding-free convention (what ReplayMixture rows give a Trainer): position_ids restart per example and
        # no attention_mask, so transformers builds a block-diagonal causal mask from the positions.
        packed = _sum_loss(forward(tokens, position_ids=positions), labels)
        alone = _alone(forward, examples)
        # What HF Trainer computes (labels shifted by the model, no use_cache argument): with the config's default
        # use_cache=True the model makes a cache, and transformers then ignores packed positions (attention leaks);
        # ReplayMixture's trainer callback turns the config's use_cache off for packed rows.
        leaky = model(input_ids=tokens, position_ids=positions, labels=labels)
        model.config.use_cache = False
        out = model(input_ids=tokens, position_ids=positions, labels=labels)
    n_labels = int((labels[0, 1:] != -100).sum())
    assert torch.allclose(packed, alone, rtol=1e-5, atol=1e-5), (packed, alone)
    assert torch.allclose(out.loss * n_labels, alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(leaky.loss * n_labels, alone, rtol=1e-4)


def test_layout_packs_whole_documents_and_counts_truncation():
    lengths = np.array([4, 5, 3, 12, 2, 6])
    lay = layout(lengths, 10, "documents")
    rows = [lay.doc[lay.row_start[r] : lay.row_start[r + 1]].tolist() for r in range(lay.num_rows)]
    assert rows == [[0, 1], [2], [3], [4, 5]]  # 4+5 fit; 3 does not fit the 1 left; 12 alone, cut to 10
    assert (lay.truncated_documents, lay.truncated_tokens) == (1, 2)
    assert sorted(d for r in rows for d in r) == list(range(6))  # nothing dropped
    padded = layout(lengths, 10, "padded")
    assert padded.num_rows == 6


def test_rows_of_an_instruction_store(pc_store):
    rows = DocumentRows(pc_store)
    lay = rows.layout("train", 64)
    r = rows.rows("train", 64, np.arange(lay.num_rows))
    offsets = pc_store.doc_offsets("train")
    mask = np.asarray(pc_store.loss_mask("train")).astype(bool)
    # Every document's tokens appear once, in a row, with positions from 0; its loss flags are its mask without
    # its first token.
    for p in range(len(lay.doc)):
        row = int(np.searchsorted(lay.row_start, p, side="right") - 1)
        seg = p - int(lay.row_start[row])
        where = np.flatnonzero(r.segments[row] == seg)
        a = int(offsets[lay.doc[p]])
        k = int(lay.length[p])
        assert len(where) == k
        assert (r.tokens[row, where] == np.asarray(pc_store.tokens("train")[a : a + k])).all()
        assert (r.positions[row, where] == np.arange(k)).all()
        assert (r.loss[row, where][1:] == mask[a + 1 : a + k]).all() and not r.loss[row, where[0]]
    # Padding is never on the loss.
    pad = r.segments == np.array([lay.row_start[i + 1] - lay.row_start[i] for i in range(lay.num_rows)])[:, None]
    assert not r.loss[pad].any()

"""Shared prefixes: runs whose training is identical up to step s are trained once up to s.

Two runs share their first s steps when everything that decides those steps agrees: every config
field outside the stages (model, data, optimizer, seed, batch, precision, eval...: the signature
`replaylab.fingerprint.prefix_signature`), and at each step the stage and position in it, the
sequences drawn per domain (`replaylab.train.mixture.plan_counts`), the LR and whether the optimizer
is reset. A domain's budget and epochs matter only from the first step
that draws from it, so they sit in the step signature, not the global one. Typical cases: mid-training
with alpha = 1 under one WSD schedule (every rho pre-trains on generic data only in the stable phase and
differs only from its own transition point on), and fine-tuning on several targets after the same
generic pre-training.

`plan_prefixes` links each run to the run it shares the longest prefix with (a maximum spanning tree
over shared lengths, which for this prefix relation equals the prefix trie). The parent ("carrier")
keeps checkpoints every `granularity` steps; the child starts from the parent's checkpoint at the
largest multiple of `granularity` within the shared prefix (`run_training(init_from=...)`), and must
end bit for bit where the same run trained alone ends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from replaylab.config import to_dict
from replaylab.fingerprint import prefix_signature
from replaylab.runconfig import RunConfig, lr_span_stages


def _lr_spans(config: RunConfig) -> list[tuple[str, int, int]]:
    """Per stage: (the LR curve that covers it, the curve's length, the stage's offset in the curve).

    A stage with schedule `continue` extends the previous stage's curve, so one curve spans several
    stages; two steps have the same LR when their curve description, length and offset agree."""
    lengths = config.stage_steps()
    out: list[tuple[str, int, int]] = [("", 0, 0)] * len(lengths)
    for span in lr_span_stages([s.lr.schedule for s in config.stages]):
        lr = config.stages[span[0]].lr
        desc = json.dumps(to_dict(lr), sort_keys=True)
        total = sum(lengths[i] for i in span)
        offset = 0
        for i in span:
            out[i] = (desc, total, offset)
            offset += lengths[i]
    return out


def step_signatures(config: RunConfig, interner: dict) -> np.ndarray:
    """int64 (total_steps, k): one row per step; equal rows = equal steps (given equal global signatures)."""
    from replaylab.train.mixture import plan_counts

    counts = np.diff(plan_counts(config), axis=0)  # sequences per domain at each step
    # Which sequences a draw yields depends on the domain's budget (and its epochs check on the run):
    # one column per domain, nonzero at the steps that draw from it.
    limits = np.array(
        [
            interner.setdefault(("domain", name, d.budget, d.epochs), len(interner))
            for name, d in config.data.domains.items()
        ],
        dtype=np.int64,
    )
    drawn = np.where(counts > 0, limits[None, :] + 1, 0)
    lengths = config.stage_steps()
    rows = []
    for idx, (stage, n, (desc, span_len, span_off)) in enumerate(zip(config.stages, lengths, _lr_spans(config))):
        curve = interner.setdefault((desc, span_len), len(interner))
        offset = np.arange(n, dtype=np.int64)
        reset = np.zeros(n, dtype=np.int64)
        reset[0] = int(idx == 0 or stage.optimizer == "reset")
        rows.append(np.stack([np.full(n, idx), offset, reset, np.full(n, curve), span_off + offset], axis=1))
    layout = np.concatenate(rows, axis=0)
    return np.concatenate([layout, counts, drawn], axis=1)


def shared_steps(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the common prefix of two step-signature arrays."""
    n = min(len(a), len(b))
    diff = np.nonzero(np.any(a[:n] != b[:n], axis=1))[0]
    return int(diff[0]) if len(diff) else n


@dataclass(frozen=True)
class Branch:
    parent: str  # run id of the carrier
    step: int  # the child starts from the parent's checkpoint at this step


def plan_prefixes(configs: dict[str, RunConfig], *, granularity: int = 1, min_shared: int = 1) -> dict[str, Branch]:
    """For each run that can branch off another: its parent and branch step. Runs absent start from scratch."""
    groups: dict[str, list[str]] = {}
    for rid, cfg in configs.items():
        if cfg.stages[0].init != "scratch" and not cfg.stages[0].init.startswith(("checkpoint:", "hf:")):
            continue
        groups.setdefault(prefix_signature(cfg), []).append(rid)
    out: dict[str, Branch] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        interner: dict = {}
        sigs = {rid: step_signatures(configs[rid], interner) for rid in members}
        out.update(_spanning_tree(sorted(members), sigs, granularity, min_shared))
    # A parent holds checkpoints only after its own branch step: branch earlier ones off its ancestor.
    for rid in sorted(out):
        b = out[rid]
        while b.parent in out and out[b.parent].step >= b.step:
            b = Branch(out[b.parent].parent, b.step)
        out[rid] = b
    return out


def _spanning_tree(
    members: list[str], sigs: dict[str, np.ndarray], granularity: int, min_shared: int
) -> dict[str, Branch]:
    """Prim's algorithm maximizing the shared steps. The root is the run sharing the most steps with all
    others (ties: the first id), and ties keep the earlier parent, so children hang off one carrier
    where possible (a star branches in parallel; a chain would wait on each link)."""
    shared = {(a, b): shared_steps(sigs[a], sigs[b]) for a in members for b in members if a < b}
    pair = lambda a, b: shared[(a, b) if a < b else (b, a)]  # noqa: E731
    root = max(members, key=lambda r: (sum(pair(r, o) for o in members if o != r), -members.index(r)))
    placed = [root]
    best: dict[str, tuple[int, str]] = {r: (pair(root, r), root) for r in members if r != root}
    out: dict[str, Branch] = {}
    while best:
        rid = max(best, key=lambda r: (best[r][0], -members.index(r)))
        common, parent = best.pop(rid)
        # A branch must leave the child at least one step of its own, and sit on a checkpoint step.
        step = min(common, len(sigs[rid]) - 1, len(sigs[parent]) - 1)
        step -= step % granularity
        if step >= max(min_shared, 1):
            out[rid] = Branch(parent, step)
        placed.append(rid)
        for other in best:
            s = pair(rid, other)
            if s > best[other][0]:
                best[other] = (s, rid)
    return out


def steps_saved(configs: dict[str, RunConfig], branches: dict[str, Branch]) -> tuple[int, int]:
    """(steps if every run trains alone, steps with the shared prefixes)."""
    alone = sum(c.train.total_steps for c in configs.values())
    return alone, alone - sum(b.step for b in branches.values())


def carrier_checkpoints(branches: dict[str, Branch]) -> dict[str, list[int]]:
    """Per carrier run: the steps at which its children branch (checkpoints it must keep)."""
    out: dict[str, list[int]] = {}
    for b in branches.values():
        out.setdefault(b.parent, []).append(b.step)
    return {k: sorted(set(v)) for k, v in out.items()}

"""Where the replay fraction becomes batches: the deterministic mixture sampler.

A stage's mixture {domain: token share} is turned into exact per-block sequence counts. A block is
`train.mixture_block` sequences (default: one batch); a step is batch_size / block blocks. Counts are
apportioned cumulatively inside each stage: before block j the running deficit of domain d is
w_d * B * j - given_d; block j gives each domain floor(deficit + w_d * B) (at least 0) and the seats
left go to the largest fractional remainders, ties to the earlier domain in `data.domains`. The
running total therefore never drifts by a whole sequence (weight 1/1024 with 16-sequence blocks gives
one target sequence every 64 blocks), and the realized share of a stage matches the requested one to
within one sequence. Exact guarantees hold with two mixed domains (the paper's setting): every block
holds the floor or the ceiling of its quota and the running deficit stays within 1/2. With three or
more, a block can hold one more or one fewer than that, and when several tiny-weight domains were just
served the clipped (negative) claims can push a running deficit slightly past one sequence (1.07 at
worst in a stress test of 6,000 random 3-8 domain mixtures); realized shares still match to about one
sequence per stage.

Everything is a pure function of (config, seed, global step): the order inside a block comes from a
generator seeded by (seed, stage, block), and the k-th sequence drawn from a domain (counted across
stages) maps to a fixed sequence id through per-epoch seeded permutations. Resuming therefore needs no
iterator state, and two runs whose configs agree on a prefix of stages see identical batches there.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np

from replaylab.errors import ConfigError, DataError
from replaylab.runconfig import RunConfig

if TYPE_CHECKING:  # the store module belongs to the data layer; only its interface is used here
    from replaylab.data.store import TokenStore

# Distinct words mixed into seeds so the in-block order and the domain streams never share a stream.
_ORDER_TAG = 0x6F72646572  # "order"
_STREAM_TAG = 0x73747265616D  # "stream"
# Floating-point slack when comparing fractional seat claims: weights such as 1/3 are not exact in
# binary, and a claim of 0.9999999999 must count as a whole sequence, deterministically.
_EPS = 1e-9
_PERM_CACHE = 4  # epoch permutations kept per domain (unlimited domains can be millions long)


def domain_names(config: RunConfig) -> list[str]:
    """Domains in their stable order (`data.domains` order): column order of every count array."""
    return list(config.data.domains)


def block_size(config: RunConfig) -> int:
    """Sequences per mixture block; must divide the batch so a step is a whole number of blocks."""
    batch = config.train.batch_size
    block = config.train.mixture_block or batch
    if block < 1 or batch % block:
        raise ConfigError(
            f"train.mixture_block ({block}) must divide train.batch_size ({batch}); "
            f"set it to a divisor of {batch}, or leave it unset (= one block per batch)"
        )
    return block


def stage_at(starts: list[int], step: int) -> int:
    """Index of the stage that global `step` (0-based) belongs to; `starts` is `config.stage_starts()`."""
    if not 0 <= step < starts[-1]:
        raise ConfigError(f"step {step} is outside the run (0..{starts[-1] - 1})")
    return bisect.bisect_right(starts, step) - 1


def _stage_weights(config: RunConfig, stage_idx: int) -> list[float]:
    mix = config.stages[stage_idx].mixture
    return [float(mix.get(name, 0.0)) for name in domain_names(config)]


def apportion_blocks(weights: list[float], block: int, num_blocks: int) -> np.ndarray:
    """Per-block sequence counts (num_blocks, n_domains) for one stage, cumulative largest remainder.

    Each domain's running total stays within about one sequence of weight * sequences so far (see the
    module docstring for the exact guarantees). The result is
    read-only and cached: sweeps plan many configs that share stage mixtures."""
    return _apportion(tuple(float(w) for w in weights), int(block), int(num_blocks))


@functools.lru_cache(maxsize=64)
def _apportion(weights: tuple[float, ...], block: int, num_blocks: int) -> np.ndarray:
    n = len(weights)
    total_w = sum(weights)
    # Weights sum to 1 within 1e-6 (validated); normalise so the seat claims sum to exactly one block.
    quota = [w / total_w * block for w in weights]  # sequences per block each domain is owed
    active = [d for d in range(n) if quota[d] > 0]
    if len(active) <= 2:
        out = _apportion_closed_form(quota, active, block, num_blocks)
    else:
        out = _apportion_loop(quota, active, block, num_blocks)
    out.setflags(write=False)
    return out


def _apportion_closed_form(quota: list[float], active: list[int], block: int, num_blocks: int) -> np.ndarray:
    """The same apportionment for one or two mixed domains, without the loop. With two domains the
    fractional claims of a block sum to 0 or 1, so the running deficits never leave [-1/2, 1/2] and
    the history drops out: after j blocks a domain holds floor(T) plus one if its remainder beats the
    other's (T = quota * j; ties to the earlier domain), exactly what the loop hands out."""
    out = np.zeros((num_blocks, len(quota)), dtype=np.int64)
    if len(active) == 1:
        out[:, active[0]] = block
        return out
    a, b = active
    j = np.arange(1, num_blocks + 1, dtype=np.float64)
    ta, tb = quota[a] * j, quota[b] * j  # cumulative quotas
    fa, fb = np.floor(ta + _EPS), np.floor(tb + _EPS)
    ra, rb = np.round(ta - fa, 9), np.round(tb - fb, 9)
    left = block * j - fa - fb  # seats the whole parts leave free: 0 or 1
    cum_b = fb + ((left >= 1) & (rb > ra))
    cum = np.empty(num_blocks + 1, dtype=np.int64)
    cum[0] = 0
    cum[1:] = cum_b
    out[:, b] = np.diff(cum)
    out[:, a] = block - out[:, b]
    return out


def _apportion_loop(quota: list[float], active: list[int], block: int, num_blocks: int) -> np.ndarray:
    """The apportionment as specified, block by block (three or more mixed domains)."""
    n = len(quota)
    out = np.zeros((num_blocks, n), dtype=np.int64)
    given = [0] * n
    for j in range(num_blocks):
        seats = [0] * n
        claims = []
        for d in active:
            want = quota[d] * (j + 1) - given[d]  # running deficit plus this block's quota
            base = max(math.floor(want + _EPS), 0)
            seats[d] = base
            claims.append((-round(want - base, 9), d))  # rounded so near-equal remainders tie by order
        left = block - sum(seats)
        claims.sort()
        for _, d in claims[: max(left, 0)]:
            seats[d] += 1
        # Rarely (three or more domains, some owed less than a sequence per block and over-served) the
        # whole parts overfill the block, because the negative claims were clipped to zero: take the
        # excess back from the smallest remainders (ties: the later domain gives first).
        for _, d in reversed(claims):
            if left >= 0:
                break
            if seats[d] > 0:
                seats[d] -= 1
                left += 1
        for d in active:
            given[d] += seats[d]
        out[j] = seats
        # Every deficit back at zero: the pattern so far repeats exactly, so tile it (rational weights
        # such as 1/1024 repeat every few dozen blocks; this keeps million-block plans cheap).
        if all(abs(quota[d] * (j + 1) - given[d]) < _EPS for d in active) and j + 1 < num_blocks:
            period = j + 1
            reps = -(-num_blocks // period)
            out = np.tile(out[:period], (reps, 1))[:num_blocks]
            break
    return out


def _step_counts(config: RunConfig) -> list[np.ndarray]:
    """Per stage: sequences of each domain at each step, (stage_steps, n_domains)."""
    block = block_size(config)
    per_step = config.train.batch_size // block
    out = []
    for idx, steps in enumerate(config.stage_steps()):
        blocks = apportion_blocks(_stage_weights(config, idx), block, steps * per_step)
        out.append(blocks.reshape(steps, per_step, -1).sum(axis=1))
    return out


def plan_counts(config: RunConfig) -> np.ndarray:
    """Cumulative sequences drawn per domain before each step: int64 (total_steps + 1, n_domains).

    Row s = counts before step s; the last row = the run's totals. Needs no token stores."""
    per_step = np.concatenate(_step_counts(config), axis=0)
    out = np.zeros((per_step.shape[0] + 1, per_step.shape[1]), dtype=np.int64)
    np.cumsum(per_step, axis=0, out=out[1:])
    return out


def check_epochs(config: RunConfig) -> None:
    """Every domain with `epochs` set must be drawn epochs * budget times by the stages (to within one
    sequence per stage that mixes it, the apportionment's guarantee). Raise ConfigError otherwise."""
    names = domain_names(config)
    stage_counts = [c.sum(axis=0) for c in _step_counts(config)]
    lengths = config.stage_steps()
    batch = config.train.batch_size
    for d, name in enumerate(names):
        dom = config.data.domains[name]
        if dom.epochs is None:
            continue
        budget = dom.budget
        want = dom.epochs * budget
        drawn = int(sum(c[d] for c in stage_counts))
        mixing = [i for i, s in enumerate(config.stages) if s.mixture.get(name, 0) > 0]
        if abs(drawn - want) <= max(len(mixing), 1):
            continue
        # Suggest the fix on the last stage that mixes the domain (or the last stage if none does).
        k = mixing[-1] if mixing else len(config.stages) - 1
        stage = config.stages[k]
        rest = drawn - int(stage_counts[k][d])
        need = want - rest  # sequences stage k would have to draw
        w = stage.mixture.get(name, 0.0)
        fixes = []
        if need > 0 and need <= lengths[k] * batch:
            fixes.append(f"set stage {stage.name!r} weight of {name!r} to {need / (lengths[k] * batch):.6g}")
        if need > 0 and w > 0:
            fixes.append(f"make stage {stage.name!r} {math.ceil(need / (w * batch))} steps long")
        if need > lengths[k] * batch:
            fixes.insert(0, f"stage {stage.name!r} cannot fit that even at weight 1")
        fixes.append(f"or set data.domains.{name}.epochs to {drawn / budget:.6g}")
        raise ConfigError(
            f"domain {name!r} asks for epochs={dom.epochs:g} over its budget of {budget} sequences "
            f"({want:g} sequences), but the stages draw {drawn} sequences = {drawn / budget:.4g} epochs; "
            + "; ".join(fixes)
        )


def _stable_key(name: str) -> int:
    """A domain's seed word from its name, so a domain's stream does not change when others are added."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")


def _seed_word(seed: int) -> int:
    return seed % (1 << 64)  # SeedSequence takes non-negative integers; negative seeds stay distinct


class MixtureSampler:
    """Batches of a run as a pure function of (config, global step).

    `batch(step)` returns (tokens int64 (batch_size, seq_len + 1), domain index int16 (batch_size,)).
    Domains are indexed in `data.domains` order."""

    def __init__(self, config: RunConfig, stores: dict[str, "TokenStore"]):
        self.config = config
        self.names = domain_names(config)
        self.seq_len = config.data.seq_len
        self.batch_size = config.train.batch_size
        self.block = block_size(config)
        self.seed = _seed_word(config.seed)
        missing = [n for n in self.names if n not in stores]
        if missing:
            raise DataError(f"no token store given for domain(s) {', '.join(missing)}; pass one per data.domains entry")
        self.stores = {n: stores[n] for n in self.names}
        for name, store in self.stores.items():
            meta = getattr(store, "meta", None) or {}
            if meta.get("instructions") and not hasattr(store, "rows"):
                # Read as a stream it would train prompts and cross example boundaries: say so instead.
                raise DataError(
                    f"domain {name!r}: store {store.path} holds {meta['instructions']['format']} records with a loss "
                    "mask; read it as whole examples per row (replaylab.data.rows.read_as_rows, as replaylab train, "
                    "replaylab finetune and ReplayMixture do), or build the source as text (format: text)"
                )
        check_epochs(config)

        self.starts = config.stage_starts()
        per_step = self.batch_size // self.block
        # Per-block counts of the whole run, and the cumulative counts before each block.
        blocks = [
            apportion_blocks(_stage_weights(config, i), self.block, n * per_step)
            for i, n in enumerate(config.stage_steps())
        ]
        self._blocks = np.concatenate(blocks, axis=0)
        self._before = np.zeros((self._blocks.shape[0] + 1, len(self.names)), dtype=np.int64)
        np.cumsum(self._blocks, axis=0, out=self._before[1:])
        self._stage_totals = [b.sum(axis=0) for b in blocks]

        # Size of each domain's cycle: its budget (limited) or all its train sequences (unlimited).
        self.cycle: dict[str, int] = {}
        self._budget_ids: dict[str, np.ndarray | None] = {}
        for name in self.names:
            dom = config.data.domains[name]
            available = int(self.stores[name].num_sequences("train", self.seq_len))
            drawn = int(self._before[-1, self.names.index(name)])
            if dom.budget is None:
                if available < 1 and drawn:
                    raise DataError(
                        f"domain {name!r}: its store holds no train sequence of length {self.seq_len}; "
                        "use a bigger corpus or a shorter data.seq_len"
                    )
                self.cycle[name] = max(available, 1)  # an undrawn, empty domain (eval only) is harmless
                self._budget_ids[name] = None
            else:
                if dom.budget > available:
                    raise DataError(
                        f"domain {name!r}: budget {dom.budget} sequences exceeds the {available} train sequences "
                        f"of length {self.seq_len} its store holds; lower data.domains.{name}.budget to at most "
                        f"{available} or use a bigger corpus"
                    )
                self.cycle[name] = dom.budget
                self._budget_ids[name] = np.asarray(
                    self.stores[name].budget_indices(self.seq_len, dom.budget, config.data.budget_seed), dtype=np.int64
                )
        self._perms: dict[str, OrderedDict[int, np.ndarray]] = {n: OrderedDict() for n in self.names}

    # ---- counters (all pure functions of the step) ------------------------------------------------
    def _row(self, step: int) -> np.ndarray:
        if not 0 <= step <= self.starts[-1]:
            raise ConfigError(f"step {step} is outside the run (0..{self.starts[-1]})")
        return self._before[step * (self.batch_size // self.block)]

    def counts_before(self, step: int) -> dict[str, int]:
        """Sequences drawn per domain before `step` (step = total_steps gives the run's totals)."""
        return {n: int(c) for n, c in zip(self.names, self._row(step))}

    def tokens_seen(self, step: int) -> dict[str, int]:
        """Training tokens (inputs) seen per domain before `step`."""
        return {n: int(c) * self.seq_len for n, c in zip(self.names, self._row(step))}

    def epochs(self, step: int) -> dict[str, float]:
        """Passes over each domain's cycle (its budget, or its whole store if unlimited) before `step`."""
        return {n: int(c) / self.cycle[n] for n, c in zip(self.names, self._row(step))}

    def realized_shares(self, stage_idx: int) -> dict[str, float]:
        """Share of stage `stage_idx`'s sequences that each domain actually got."""
        if not 0 <= stage_idx < len(self._stage_totals):
            raise ConfigError(f"stage index {stage_idx} is out of range: the run has {len(self._stage_totals)} stages")
        totals = self._stage_totals[stage_idx]
        return {n: float(t) / float(totals.sum()) for n, t in zip(self.names, totals)}

    # ---- batches ---------------------------------------------------------------------------------
    def order(self, step: int) -> np.ndarray:
        """Domain index of every sequence slot of `step`'s batch: int16 (batch_size,)."""
        stage = stage_at(self.starts, step)
        per_step = self.batch_size // self.block
        first_block = self.starts[stage] * per_step  # global index of the stage's first block
        out = []
        for b in range(step * per_step, (step + 1) * per_step):
            slots = np.repeat(np.arange(len(self.names), dtype=np.int16), self._blocks[b])
            seq = np.random.SeedSequence([self.seed, stage, b - first_block, _ORDER_TAG])
            np.random.Generator(np.random.PCG64(seq)).shuffle(slots)
            out.append(slots)
        return np.concatenate(out)

    def _permutation(self, name: str, epoch: int) -> np.ndarray:
        cache = self._perms[name]
        if epoch in cache:
            cache.move_to_end(epoch)
            return cache[epoch]
        seq = np.random.SeedSequence([self.seed, _stable_key(name), epoch, _STREAM_TAG])
        perm = np.random.Generator(np.random.PCG64(seq)).permutation(self.cycle[name])
        cache[epoch] = perm
        if len(cache) > _PERM_CACHE:
            cache.popitem(last=False)
        return perm

    def sequence_ids(self, name: str, draws: np.ndarray) -> np.ndarray:
        """Train sequence ids of a domain's draws number `draws` (k-th sequence drawn, across stages)."""
        n = self.cycle[name]
        epochs, pos = np.divmod(np.asarray(draws, dtype=np.int64), n)
        ids = np.empty(len(pos), dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            ids[sel] = self._permutation(name, int(e))[pos[sel]]
        budget_ids = self._budget_ids[name]
        return ids if budget_ids is None else budget_ids[ids]

    def batch(self, step: int, rows: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Step `step`'s batch: tokens int64 (batch_size, seq_len + 1) and domain index int16 (batch_size,).
        rows (lo, hi): only those rows of the same global batch (a data-parallel rank's share): the others'
        sequences are never read."""
        slots = self.order(step)
        start = self._row(step)
        lo, hi = rows if rows is not None else (0, self.batch_size)
        tokens = np.empty((hi - lo, self.seq_len + 1), dtype=np.int64)
        for d, name in enumerate(self.names):
            where = np.flatnonzero(slots == d)  # the domain's k-th slot holds its k-th draw of the step
            mine = (where >= lo) & (where < hi)
            if not mine.any():
                continue
            draws = start[d] + np.flatnonzero(mine).astype(np.int64)
            tokens[where[mine] - lo] = self.stores[name].sequences(
                "train", self.seq_len, self.sequence_ids(name, draws)
            )
        return tokens, slots[lo:hi]

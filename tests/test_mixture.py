"""The mixture sampler: exact per-block counts, determinism, prefix sharing, epochs over a budget."""

from __future__ import annotations

import numpy as np
import pytest

from replaylab.config import from_dict
from replaylab.errors import ConfigError, DataError, ReplaylabError
from replaylab.runconfig import RunConfig
from replaylab.train.mixture import (
    MixtureSampler,
    apportion_blocks,
    check_epochs,
    domain_names,
    plan_counts,
    stage_at,
)

SEQ = 32


def make_config(
    stages, *, batch=16, block=None, total=None, seed=0, target_budget=8, target_epochs=None, domains=None
) -> RunConfig:
    stages = [dict(s) for s in stages]
    total = total or sum(s["steps"] for s in stages)
    domains = domains or {
        "generic": {"source": "prose"},
        "target": {"source": "code", "budget": target_budget, "epochs": target_epochs},
    }
    return from_dict(
        RunConfig,
        {
            "seed": seed,
            "data": {"seq_len": SEQ, "domains": domains},
            "stages": stages,
            "train": {"total_steps": total, "batch_size": batch, "mixture_block": block},
        },
    )


def two_stage(rho=0.75, s1=40, s2=24, w1=1 / 32, **kw) -> RunConfig:
    return make_config(
        [
            {"name": "pretrain", "steps": s1, "mixture": {"generic": 1 - w1, "target": w1}},
            {"name": "finetune", "steps": s2, "mixture": {"generic": rho, "target": 1 - rho}},
        ],
        **kw,
    )


@pytest.fixture
def stores(code_store, prose_store):
    return {"generic": prose_store, "target": code_store}


# ---- counting (no stores) ---------------------------------------------------------------------------
def test_plan_counts_shape_and_totals():
    cfg = two_stage()
    plan = plan_counts(cfg)
    assert domain_names(cfg) == ["generic", "target"]
    assert plan.shape == (65, 2) and plan.dtype == np.int64
    assert (plan[0] == 0).all()
    assert (plan.sum(axis=1) == 16 * np.arange(65)).all()  # every step is exactly one batch
    assert (np.diff(plan, axis=0) >= 0).all()
    starts = cfg.stage_starts()
    assert starts == [0, 40, 64]
    # stage 1: 40 steps * 16 * 1/32 = 20 target sequences; stage 2: 24 * 16 * 0.25 = 96
    assert plan[40, 1] == 20 and plan[64, 1] - plan[40, 1] == 96
    assert [stage_at(starts, s) for s in (0, 39, 40, 63)] == [0, 0, 1, 1]
    for outside in (-1, 64):
        with pytest.raises(ConfigError, match="outside the run"):
            stage_at(starts, outside)


def test_one_in_1024_gives_one_target_sequence_every_64_blocks():
    counts = apportion_blocks([1 - 1 / 1024, 1 / 1024], 16, 64 * 100)
    hits = np.flatnonzero(counts[:, 1])
    assert len(hits) == 100 and (np.diff(hits) == 64).all()
    assert (counts[hits, 1] == 1).all() and (counts.sum(axis=1) == 16).all()


def test_running_total_never_drifts_by_a_whole_sequence():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 6))
        w = rng.dirichlet(np.ones(n) * rng.choice([0.2, 1.0, 5.0]))
        block = int(rng.choice([1, 3, 7, 16, 64]))
        blocks = int(rng.integers(1, 200))
        c = apportion_blocks(list(w), block, blocks)
        assert (c.sum(axis=1) == block).all() and (c >= 0).all()
        drift = np.cumsum(c, axis=0) - np.outer(np.arange(1, blocks + 1), w * block)
        assert (np.abs(c - w * block) < 2).all()
        if n <= 2:  # the paper's setting: exact guarantees
            assert np.abs(drift).max() <= 0.5
            assert ((c == np.floor(w * block)) | (c == np.ceil(w * block))).all()
        else:  # see the module docstring: about one sequence, clipped deficits can push it just past 1
            assert np.abs(drift).max() < 1.25


def test_many_tiny_domains_never_overfill_a_block():
    # A case where the clipped whole parts claim 5 seats of a 4-sequence block: the excess is taken back.
    quota = [0.000335047, 0.004774066, 0.004952657, 0.893165661, 0.035320670, 0.641613381, 2.415151416, 0.004687103]
    c = apportion_blocks([q / 4 for q in quota], 4, 400)
    assert (c.sum(axis=1) == 4).all() and (c >= 0).all()
    drift = np.cumsum(c, axis=0) - np.outer(np.arange(1, 401), np.array(quota) / sum(quota) * 4)
    assert np.abs(drift).max() < 1.25


def test_two_domain_closed_form_equals_the_block_loop():
    from replaylab.train.mixture import _apportion_closed_form, _apportion_loop

    rng = np.random.default_rng(1)
    cases = [1 / 1024, 1 / 3, 0.5, 0.1, 0.875, 0.0123456789] + list(rng.random(40)) + list(rng.integers(1, 64, 40) / 64)
    for i, w in enumerate(cases):
        block = [1, 3, 16, 64, 1024][i % 5]
        quota = [(1 - w) * block, 0.0, w * block]
        assert np.array_equal(
            _apportion_closed_form(quota, [0, 2], block, 300), _apportion_loop(quota, [0, 2], block, 300)
        ), (w, block)


def test_zero_weight_domain_gets_nothing_and_ties_go_to_config_order():
    assert (apportion_blocks([0.3333333, 0.3333333, 0.3333333], 7, 50).sum(axis=1) == 7).all()  # sums ~1
    c = apportion_blocks([0.5, 0.0, 0.5], 1, 6)
    assert c[:, 1].sum() == 0
    assert c[:, 0].tolist() == [1, 0, 1, 0, 1, 0]  # equal claims: the first listed domain goes first


def test_blocks_smaller_than_batch():
    cfg = make_config([{"name": "s", "steps": 10, "mixture": {"generic": 0.9375, "target": 0.0625}}], batch=32, block=8)
    plan = plan_counts(cfg)
    # the quota of an 8-sequence block is 0.5 target sequences, so a step of four blocks gets exactly 2
    assert (np.diff(plan[:, 1]) == 2).all()
    with pytest.raises(ConfigError, match=r"mixture_block \(12\) must divide train.batch_size \(32\)"):
        plan_counts(make_config([{"name": "s", "steps": 4, "mixture": {"generic": 1.0}}], batch=32, block=12))


def test_shared_prefix_has_identical_plan():
    a, b = plan_counts(two_stage(rho=0.5)), plan_counts(two_stage(rho=0.875, s1=40, s2=24))
    assert (a[:41] == b[:41]).all() and not (a[41:] == b[41:]).all()
    # a shorter first stage with the same mixture shares its steps too (counts are per stage)
    c = plan_counts(two_stage(rho=0.5, s1=30, s2=34))
    assert (a[:31] == c[:31]).all()


def test_check_epochs_accepts_exact_and_rejects_with_a_fix():
    # 40*16/32 + 24*16*0.25 = 20 + 96 = 116 target draws; budget 4 -> 29 epochs
    check_epochs(two_stage(target_budget=4, target_epochs=29))
    with pytest.raises(ConfigError) as err:
        check_epochs(two_stage(target_budget=4, target_epochs=32))
    msg = str(err.value)
    assert "'target'" in msg and "epochs=32" in msg and "29 epochs" in msg
    assert "set stage 'finetune' weight of 'target' to 0.28125" in msg  # (128 - 20) / 384
    check_epochs(two_stage(rho=1 - 0.28125, target_budget=4, target_epochs=32))  # the suggested fix works
    # more epochs than the stage can hold even at weight 1: an error, never a silent truncation
    with pytest.raises(ConfigError, match="cannot fit that even at weight 1"):
        check_epochs(two_stage(target_budget=4, target_epochs=200))
    assert isinstance(err.value, ReplaylabError)


# ---- batches from real stores --------------------------------------------------------------------
def test_batch_shapes_counts_and_content(stores):
    cfg = two_stage(target_budget=8)
    sampler = MixtureSampler(cfg, stores)
    plan = plan_counts(cfg)
    for step in (0, 1, 39, 40, 63):
        tokens, dom = sampler.batch(step)
        assert tokens.shape == (16, SEQ + 1) and tokens.dtype == np.int64
        assert dom.shape == (16,) and dom.dtype == np.int16
        assert np.bincount(dom, minlength=2).tolist() == (plan[step + 1] - plan[step]).tolist()
    # every target row is one of the budget's sequences, exactly as the store returns it
    budget = stores["target"].budget_indices(SEQ, 8, cfg.data.budget_seed)
    allowed = {tuple(r) for r in stores["target"].sequences("train", SEQ, budget)}
    tokens, dom = sampler.batch(50)
    assert all(tuple(r) in allowed for r in tokens[dom == 1])
    assert sampler.counts_before(64) == {"generic": int(plan[64, 0]), "target": int(plan[64, 1])}
    assert sampler.tokens_seen(40)["target"] == 20 * SEQ
    assert sampler.epochs(64)["target"] == plan[64, 1] / 8
    shares = sampler.realized_shares(1)
    assert shares["target"] == pytest.approx(0.25) and sum(shares.values()) == pytest.approx(1)


def test_deterministic_and_order_free(stores):
    cfg = two_stage()
    s1, s2 = MixtureSampler(cfg, stores), MixtureSampler(cfg, stores)
    forward = [s1.batch(s) for s in range(64)]
    for s in (63, 10, 40, 0, 41):  # any order, fresh object: same bits (resume needs no state)
        t, d = s2.batch(s)
        assert np.array_equal(t, forward[s][0]) and np.array_equal(d, forward[s][1])
    other = MixtureSampler(two_stage(seed=1), stores)
    assert not all(np.array_equal(other.batch(s)[0], forward[s][0]) for s in range(4))


def test_shared_prefix_sees_identical_batches(stores):
    a = MixtureSampler(two_stage(rho=0.5), stores)
    b = MixtureSampler(two_stage(rho=0.875), stores)
    for s in range(40):
        assert np.array_equal(a.batch(s)[0], b.batch(s)[0])
    assert not np.array_equal(a.batch(45)[1], b.batch(45)[1])


def test_epochs_cover_the_budget_once_each_and_reshuffle(stores):
    cfg = make_config(
        [{"name": "s", "steps": 32, "mixture": {"generic": 0.75, "target": 0.25}}], target_budget=16, target_epochs=8
    )
    sampler = MixtureSampler(cfg, stores)
    ids = sampler.sequence_ids("target", np.arange(128))
    budget = np.sort(stores["target"].budget_indices(SEQ, 16, 0))
    epochs = ids.reshape(8, 16)
    for e in epochs:
        assert np.array_equal(np.sort(e), budget)  # each epoch visits every budget sequence once
    assert len({tuple(e) for e in epochs}) == 8  # and in a fresh order
    assert sampler.epochs(32)["target"] == 8.0 and sampler.epochs(16)["target"] == 4.0
    # the batches draw exactly those ids, in draw order
    drawn = [row for s in range(32) for row, d in zip(*sampler.batch(s)) if d == 1]
    expect = stores["target"].sequences("train", SEQ, ids)
    assert np.array_equal(np.stack(drawn), expect)


def test_unlimited_domain_cycles_with_epoch_count(stores):
    n = stores["generic"].num_sequences("train", SEQ)
    cfg = make_config([{"name": "s", "steps": 4, "mixture": {"generic": 1.0}}])
    sampler = MixtureSampler(cfg, stores)
    ids = sampler.sequence_ids("generic", np.arange(2 * n))
    assert np.array_equal(np.sort(ids[:n]), np.arange(n)) and np.array_equal(np.sort(ids[n:]), np.arange(n))
    assert not np.array_equal(ids[:n], ids[n:])
    assert sampler.epochs(4)["generic"] == 64 / n


def test_user_errors(stores):
    n = stores["target"].num_sequences("train", SEQ)
    with pytest.raises(DataError, match=f"budget {n + 1} sequences exceeds the {n} train sequences"):
        MixtureSampler(two_stage(target_budget=n + 1), stores)
    with pytest.raises(DataError, match="no token store given for domain"):
        MixtureSampler(two_stage(), {"generic": stores["generic"]})
    with pytest.raises(ConfigError, match="epochs"):
        MixtureSampler(two_stage(target_budget=4, target_epochs=50), stores)
    with pytest.raises(ConfigError, match="stage index 2 is out of range"):
        MixtureSampler(two_stage(), stores).realized_shares(2)


def test_negative_seed_is_a_seed_like_any_other(stores):
    a, b = MixtureSampler(two_stage(seed=-1), stores), MixtureSampler(two_stage(seed=1), stores)
    assert np.array_equal(a.batch(3)[0], MixtureSampler(two_stage(seed=-1), stores).batch(3)[0])
    assert not np.array_equal(a.batch(3)[0], b.batch(3)[0])

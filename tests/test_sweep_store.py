"""Leases and run status without training: atomic claims, expiry, dead holders, concurrent claimers."""

from __future__ import annotations

import json
import multiprocessing as mp
import time

from hang import HANG_S

from replaylab.sweep.runstore import RunStore


def test_claim_is_exclusive_until_released(tmp_path):
    store = RunStore(tmp_path, lease_ttl=30)
    lease = store.claim("abc")
    assert lease is not None and store.status("abc") == "running"
    assert store.claim("abc") is None
    lease.release()
    assert store.status("abc") == "pending"
    assert store.claim("abc") is not None


def test_expired_lease_is_taken_over_and_recorded(tmp_path):
    store = RunStore(tmp_path, lease_ttl=0.3)
    first = store.claim("r1")
    assert first is not None and store.claim("r1") is None
    time.sleep(0.4)  # no heartbeat: the lease expires
    second = store.claim("r1")
    assert second is not None and second.took_over["holder"] == first.holder
    assert not first.renew() and first.lost  # the old holder learns it lost the run
    assert [e["event"] for e in store.events()] == ["takeover"]


def test_heartbeat_keeps_a_lease_alive(tmp_path):
    store = RunStore(tmp_path, lease_ttl=0.3)
    lease = store.claim("r1")
    with lease.heartbeat():
        time.sleep(0.8)
        assert store.claim("r1") is None
    lease.release()


def test_lease_of_a_dead_process_on_this_host_is_stale(tmp_path):
    store = RunStore(tmp_path, lease_ttl=3600)
    p = mp.get_context("spawn").Process(target=_claim_and_exit, args=(str(tmp_path),))
    p.start()
    p.join()
    assert json.loads((store.run_dir("r1") / "lease.json").read_text())["pid"] == p.pid
    assert store.status("r1") == "pending"
    assert store.claim("r1") is not None


def _claim_and_exit(root: str) -> None:
    RunStore(root, lease_ttl=3600).claim("r1")


def _race(root: str, q) -> None:
    wins = 0
    store = RunStore(root, lease_ttl=3600)
    for i in range(40):
        if store.claim(f"run{i}") is not None:
            wins += 1
    q.put(wins)
    time.sleep(1.0)  # stay alive so the leases stay valid while the others try


def test_concurrent_claimers_never_share_a_run(tmp_path):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), q)) for _ in range(3)]
    for p in procs:
        p.start()
    wins = [q.get(timeout=HANG_S) for _ in procs]
    for p in procs:
        p.join()
    assert sum(wins) == 40


def test_paper_midtraining_alpha1_column_trains_over_3x_fewer_steps():
    from pathlib import Path

    from replaylab.sweep.plan import plan_experiment

    root = Path(__file__).resolve().parent.parent
    table, doc = plan_experiment(root / "configs" / "paper" / "midtrain_alpha1.yaml")
    total = table.iloc[-1]
    assert len(doc["runs"]) == 5 and total["steps"] == 5 * 1024
    assert total["steps"] / total["steps_trained"] >= 3.0
    carrier = [e for e in doc["runs"] if e["branch_steps"]]
    assert len(carrier) == 1  # a star: every other rho branches off one carrier as it passes its point
    # exactly where each rho's stage 2 starts (delta = gamma / (1 - rho) of 1024 steps, gamma = 1/32)
    assert sorted(e["branch"]["step"] for e in doc["runs"] if e["branch"]) == [768, 896, 960, 981]
    assert carrier[0]["config"]["train"]["checkpoint_steps"] == [768, 896, 960, 981]


def test_paper_configs_plan_cleanly():
    from pathlib import Path

    from replaylab.sweep.plan import plan_experiment

    root = Path(__file__).resolve().parent.parent
    sizes = {}
    for path in sorted((root / "configs" / "paper").glob("*.yaml")):
        if path.name == "base.yaml":
            continue
        _, doc = plan_experiment(path)
        sizes[path.stem] = len(doc["runs"])
    assert sizes == {"finetune": 21, "midtrain": 20, "midtrain_alpha1": 5, "reference": 5}


def test_results_select_the_best_lr_per_cell_on_the_select_half(tmp_path):
    from replaylab.config import to_dict
    from replaylab.paths import atomic_write_text
    from replaylab.schedule import finetune
    from replaylab.sweep.results import load_results

    base = {
        "data": {"domains": {"generic": {"source": "generic"}, "code": {"source": "code"}}},
        "train": {"total_steps": 64, "batch_size": 4},
    }
    cfgs = [finetune(base, multiplier=2, lr=lr, target_fraction=1 / 16, epochs=2) for lr in (1e-4, 3e-4, 1e-3)]
    store = RunStore(tmp_path)
    entries = [{"run_id": f"r{i}", "coords": {}, "config": to_dict(c), "branch": None} for i, c in enumerate(cfgs)]
    store.write_plan({"name": "t", "runs": entries}, "name: t\n", {})
    # val (select half) prefers r1; test (report half) would prefer r2: selection must use val
    for i, (val, test) in enumerate([(3.0, 3.0), (2.0, 2.9), (2.5, 1.0)]):
        final = {"code": {"val_loss": val, "test_loss": test}, "generic": {"val_loss": 4.0, "test_loss": 4.0}}
        atomic_write_text(
            store.run_dir(f"r{i}") / "manifest.json",
            json.dumps({"status": "done", "meta": cfgs[i].meta, "final": final, "steps_done": 64}),
        )
    df = load_results(tmp_path)
    assert list(df.selected) == [False, True, False]
    assert df.lr_group.nunique() == 1 and list(df.strategy.unique()) == ["finetune"]
    assert {"val_loss.code", "test_loss.generic", "target_test_loss", "generic_val_loss"} <= set(df.columns)


def test_a_holder_that_lost_its_lease_is_told(tmp_path):
    store = RunStore(tmp_path, lease_ttl=0.3)
    lease = store.claim("r1")
    lost = []
    with lease.heartbeat(on_lost=lambda: lost.append(True)):
        # as if another worker took the run over while this one was paused
        (store.run_dir("r1") / "lease.json").write_text(json.dumps({"holder": "other", "expires": time.time() + 60}))
        time.sleep(0.5)
    assert lost == [True] and lease.lost
    lease.release()  # must not remove the new holder's lease
    assert store.read_lease("r1")["holder"] == "other"

"""`replaylab advise`: a real (tiny) advice end to end on real text, for one of our presets and for a tiny random
Hugging Face Llama (full and LoRA); a kill and resume that ends where an uninterrupted advice ends; the
refusals (a model that cannot load offline, a target too small, a time budget too short, another question in
the folder); and the answer's invariants (a multiplier points the way its losses do; "replay helps" only with
an interval above 1; a curve that does not fall is never inverted)."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from hang import HANG_S
from output_cli import assert_refused

from replaylab.advisor import AdviceConfig, advise, plan_advice
from replaylab.advisor.answer import answer
from replaylab.cli import main
from replaylab.errors import ConfigError
from replaylab.outputs import OutputError
from replaylab.sweep.results import load_results

SRC = str(Path(__file__).resolve().parents[1] / "src")
# a real multiple-choice task (20 Basque words, four English meanings each), scored for forgetting
BASQUE_MC = str(Path(SRC) / "replaylab" / "hf" / "lm_eval_tasks" / "basque_vocab.jsonl")


def preset_config(code_corpus, prose_corpus, tiny_tokenizer, **kw) -> AdviceConfig:
    """Curve budgets 2, 4, 8, 16 and R = 0.5 at 4, one LR, two seeds: 10 runs of a few steps each."""
    fields = dict(
        model="preset:tiny",
        target=str(code_corpus),
        replay=str(prose_corpus),
        tokenizer=tiny_tokenizer,
        budget=16,
        epochs=2,
        fractions=[0.5],
        lr_factors=[1.0],
        seeds=[0, 1],
        seq_len=32,
        batch_size=4,
        eval_sequences=16,
        pretrain_steps=4,
        lr=1e-2,
        pretrain_lr=1e-2,
    )
    return AdviceConfig(**{**fields, **kw})


def _cli_args(cfg: AdviceConfig, out: Path) -> list[str]:
    return [
        "advise",
        "--model", cfg.model, "--target", cfg.target, "--replay", cfg.replay, "--tokenizer", cfg.tokenizer,
        "--budget", str(cfg.budget), "--epochs", f"{cfg.epochs:g}", "--fractions", "0.5", "--lr-factors", "1",
        "--seeds", "2", "--seq-len", str(cfg.seq_len), "--batch-size", str(cfg.batch_size),
        "--pretrain-steps", str(cfg.pretrain_steps), "--lr", f"{cfg.lr:g}", "--pretrain-lr", f"{cfg.pretrain_lr:g}",
        "--eval-sequences", str(cfg.eval_sequences), "--out", str(out),
        *[a for task in cfg.mc_tasks for a in ("--mc-task", task)],
    ]  # fmt: skip


def _check_invariants(advice) -> None:
    for r in advice.replay:
        if r.multiplier is not None and not r.bound:
            assert (r.multiplier > 1) == (r.loss_diff < 0) or r.loss_diff == 0  # points the way its losses do
    if advice.verdict.startswith("Replay helps"):
        assert any(r.low is not None and r.low > 1 for r in advice.replay)
    if advice.law_refused:
        assert all(r.multiplier is None for r in advice.replay)
        assert advice.verdict.startswith("More target data does not help this model here")


def _check_tasks(advice, names: list[str], *, base_seeds: int) -> None:
    """Every task has base / no replay / R rows for acc and acc_norm, means of their seeds, changes that are the
    differences of those means with an interval around them, and a verdict sentence that follows the interval."""
    assert sorted({t.task for t in advice.tasks}) == sorted(names)
    assert {(t.task, t.metric) for t in advice.tasks} == {(n, m) for n in names for m in ("acc", "acc_norm")}
    for t in advice.tasks:
        assert len(t.base_seeds) == base_seeds and len(t.none_seeds) == len(t.replay_seeds) == 2
        assert all(0 <= v <= 1 for v in [*t.base_seeds, *t.none_seeds, *t.replay_seeds]) and t.items == 20
        assert t.base == pytest.approx(sum(t.base_seeds) / base_seeds)
        for c, a, b in ((t.replay_vs_none, t.replay, t.no_replay), (t.replay_vs_base, t.replay, t.base)):
            assert c.diff == pytest.approx(a - b) and c.low <= c.diff <= c.high
        if t.metric == "acc":
            said = advice.verdict.split(f"Task {t.task} (")[1].split(".")[0]
            if "reduces forgetting" in said:
                assert t.replay_vs_none.low > 0
            if "forgets more" in said:
                assert t.replay_vs_none.high < 0


@pytest.fixture(scope="module")
def preset_advice(tmp_path_factory, code_corpus, prose_corpus, tiny_tokenizer):
    home = tmp_path_factory.mktemp("advise_home")
    old = os.environ.get("REPLAYLAB_HOME")
    os.environ["REPLAYLAB_HOME"] = str(home)
    cfg = preset_config(code_corpus, prose_corpus, tiny_tokenizer, eval_sequences=16, mc_tasks=[BASQUE_MC])
    out = tmp_path_factory.mktemp("advice") / "adv"
    advice = advise(cfg, out, workers=1, say=lambda s: None)
    yield cfg, out, advice
    if old is None:
        os.environ.pop("REPLAYLAB_HOME", None)
    else:
        os.environ["REPLAYLAB_HOME"] = old


@pytest.mark.slow
def test_preset_advice_end_to_end(preset_advice):
    cfg, out, advice = preset_advice
    for name in ("advice.yaml", "advice.json", "advice.md", "recommended.yaml", "report/report.html"):
        assert (out / name).is_file(), name
    assert (out / "report" / "figures" / "loss_vs_fraction.png").is_file()
    assert (out / "report" / "figures" / "data_efficiency.png").is_file()
    table = load_results(out / "sweep")  # an ordinary sweep: `replaylab results` reads it
    assert len(table) == 10 and (table["status"] == "done").all()
    assert sorted(table["budget"].unique()) == [2, 4, 8, 16]
    assert advice.recommended_rho in (0.0, 0.5) and not advice.missing
    assert advice.forgetting["base"] is not None and advice.forgetting["no_replay"] is not None
    _check_invariants(advice)
    assert advice.verdict.split(":")[0].split(" (")[0] in (
        "Replay helps",
        "Replay does not help here",
    ) or advice.verdict.startswith("More target data does not help")
    assert advice.command == f"replaylab train {out / 'recommended.yaml'} --out runs/advised"
    # Forgetting on the task: each seed's pre-trained base, and no replay and R at their picked LR
    _check_tasks(advice, ["basque_vocab"], base_seeds=2)
    assert (out / "tasks.json").is_file() and "## Forgetting on tasks" in (out / "advice.md").read_text()
    assert "Forgetting on tasks" in (out / "report" / "report.html").read_text()
    saved = json.loads((out / "advice.json").read_text())
    assert saved["verdict"] == advice.verdict
    # Asked again: nothing trains, the same answer.
    again = advise(cfg, out, workers=1, say=lambda s: None)
    assert again.to_dict() == advice.to_dict()
    assert json.loads((out / "advice.json").read_text()) == saved
    # Another question in the same folder: refused without --overwrite (its runs would be deleted).
    with pytest.raises(OutputError, match="--overwrite"):
        advise(replace(cfg, fractions=[0.75]), out, plan_only=True, say=lambda s: None)
    # ... and with it, the folder (tasks.json included) is all replaylab's to replace (--plan: nothing is replaced)
    advise(replace(cfg, fractions=[0.75]), out, plan_only=True, overwrite=True, say=lambda s: None)
    assert json.loads((out / "advice.json").read_text()) == saved


@pytest.mark.slow
def test_kill_and_resume_ends_where_an_uninterrupted_advice_ends(preset_advice, tmp_path):
    cfg, done_out, advice = preset_advice
    out = tmp_path / "adv"
    env = {**os.environ, "PYTHONPATH": SRC}
    cmd = [sys.executable, "-m", "replaylab.cli", *_cli_args(cfg, out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + HANG_S  # a hang guard, not a measure
    while len(list(out.glob("sweep/runs/*/manifest.json"))) < 3:
        assert proc.poll() is None, "the advisor ended before its sweep had started three runs"
        assert time.time() < deadline, "hung: no three runs started"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the advisor and its workers, mid-sweep
    proc.wait()
    assert not (out / "advice.json").exists()
    assert main(_cli_args(cfg, out)) == 0
    resumed = json.loads((out / "advice.json").read_text())
    uninterrupted = json.loads((done_out / "advice.json").read_text())
    assert resumed.pop("command") == f"replaylab train {out / 'recommended.yaml'} --out runs/advised"
    uninterrupted.pop("command")  # names its own folder
    assert resumed == uninterrupted  # every loss, interval and word of the verdict


def test_answer_invariants_on_a_falling_curve():
    """A synthetic run table (the answer reads tables): replay clearly better, then clearly worse."""
    rows = []
    for seed, noise in ((0, 0.0), (1, 0.01), (2, -0.01)):
        for budget, loss in ((8, 7.0), (16, 6.6), (32, 6.2), (64, 5.8)):
            rows.append((budget, 0.0, seed, loss + noise))
        rows.append((16, 0.5, seed, 6.3 + noise))  # better than none at 16: between the curve's 16 and 32
        rows.append((16, 0.75, seed, 6.9 + noise))  # worse: between 8 and 16
    table = pd.DataFrame(
        [
            {"status": "done", "selected": True, "budget": b, "rho": r, "seed": s, "lr": 1e-3,
             "target_val_loss": loss, "target_test_loss": loss, "generic_test_loss": 5.0 + r}
            for b, r, s, loss in rows
        ]
    )  # fmt: skip
    advice = answer(table, budget=64, sub_budget=16, form="loglinear", base_general=4.9, n_boot=200)
    _check_invariants(advice)
    by_r = {r.rho: r for r in advice.replay}
    assert by_r[0.5].multiplier > 1 and by_r[0.5].low > 1 and not by_r[0.5].bound
    assert by_r[0.75].multiplier < 1 and by_r[0.75].high < 1
    assert advice.recommended_rho == 0.5 and advice.verdict.startswith("Replay helps")
    assert advice.wins["0.5"] > 0.9
    # Replay worse than none everywhere: "does not help", never a multiplier above 1.
    worse = table.assign(target_test_loss=lambda t: t.target_test_loss + (t.rho > 0) * 1.0)
    worse = worse.assign(target_val_loss=worse.target_test_loss)
    a2 = answer(worse, budget=64, sub_budget=16, form="loglinear", base_general=4.9, n_boot=200)
    assert a2.verdict.startswith("Replay does not help here") and all(r.multiplier < 1 for r in a2.replay)
    # Beyond the curve (replay better than none at the full budget): a lower bound, flagged.
    beyond = table.assign(target_test_loss=lambda t: t.target_test_loss - (t.rho == 0.5) * 1.0)
    beyond = beyond.assign(target_val_loss=beyond.target_test_loss)
    a3 = answer(beyond, budget=64, sub_budget=16, form="loglinear", base_general=4.9, n_boot=200)
    r3 = next(r for r in a3.replay if r.rho == 0.5)
    assert r3.bound == "at least" and "extrapolated" in a3.verdict
    assert 1 < r3.bound_value <= r3.multiplier  # the bound lies between 1 and the law's extrapolation
    # A curve that does not fall is never inverted: plain loss differences instead.
    flat = table.assign(target_test_loss=lambda t: t.target_test_loss.where(t.rho > 0, 6.5 + t.budget / 1000))
    flat = flat.assign(target_val_loss=flat.target_test_loss)
    a4 = answer(flat, budget=64, sub_budget=16, form="loglinear", base_general=4.9, n_boot=200)
    _check_invariants(a4)
    assert a4.law_refused and "replay cannot be valued by effective data" in a4.verdict


def test_lr_at_the_grid_edge_reaches_the_verdict():
    rows = []
    for seed in (0, 1):
        for budget, loss in ((8, 7.0), (16, 6.6), (32, 6.2), (64, 5.8)):
            for lr, extra in ((1e-3, 0.1), (2e-3, 0.0)):
                rows.append((budget, 0.0, seed, lr, loss + extra + seed * 0.01))
        for lr, extra in ((1e-3, 0.1), (2e-3, 0.0)):
            rows.append((16, 0.5, seed, lr, 6.4 + extra + seed * 0.01))
    table = pd.DataFrame(
        [{"status": "done", "budget": b, "rho": r, "seed": s, "lr": lr, "target_val_loss": x,
          "target_test_loss": x, "generic_test_loss": 5.0} for b, r, s, lr, x in rows]
    )  # fmt: skip
    table["selected"] = table["lr"] == 2e-3
    advice = answer(table, budget=64, sub_budget=16, form="loglinear", base_general=None, n_boot=100)
    assert "high edge of its grid" in advice.verdict


def test_refusals_one_line_exit_2(isolated_home, code_corpus, prose_corpus, tiny_tokenizer, tmp_path, capsys):
    cfg = preset_config(code_corpus, prose_corpus, tiny_tokenizer)
    args = _cli_args(cfg, tmp_path / "adv")

    refused = functools.partial(assert_refused, capsys)

    # a target too small for the design (N/8 must be a sequence)
    refused([*args[:9], "--budget", "4", *args[11:]], "too small for the design", "--budget")
    # a model that cannot load offline
    refused(["advise", "--model", "no-such-org/no-such-model-xyz", "--target", str(code_corpus), "--out",
             str(tmp_path / "hf")], "no-such-org/no-such-model-xyz")  # fmt: skip
    # one seed gives no interval; an unknown preset
    refused([*args, "--seeds", "1"], "at least 2 seeds")
    # tasks the runs could not score: a missing file, lm-eval on a preset, an lm-eval folder that is not there
    refused([*args, "--mc-task", str(tmp_path / "nope.jsonl")], "nope.jsonl", "does not exist")
    refused([*args, "--lm-eval-task", "replaylab_basque_vocab"], "--lm-eval-task", "--mc-task")
    hf = ["advise", "--model", "no-such-org/m", "--target", str(code_corpus), "--out", str(tmp_path / "hf2")]
    refused([*hf, "--lm-eval-task", "x", "--lm-eval-include", str(tmp_path / "no-dir")], "no-dir", "is not a folder")
    assert not (tmp_path / "adv").exists() and not (tmp_path / "hf2").exists()
    refused(["advise", "--model", "preset:nope", "--target", "x", "--out", str(tmp_path / "p")], "preset:nope")
    # a folder that is not replaylab's is never written
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    refused([*args[:-1], str(tmp_path / "mine")], "did not create")


def test_plan_and_a_time_budget_too_short(isolated_home, code_corpus, prose_corpus, tiny_tokenizer, tmp_path, capsys):
    """Both time a short trial: --plan prints the design and trains nothing; a time budget the design cannot
    fit is refused before anything trains; the smaller design it names is the first that fits."""
    cfg = preset_config(code_corpus, prose_corpus, tiny_tokenizer, lr_factors=[1.0, 2.0])
    args = [*_cli_args(cfg, tmp_path / "adv"), "--lr-factors", "1,2"]
    assert main([*args, "--plan"]) == 0
    printed = capsys.readouterr().out
    assert "20 runs (20 to train)" in printed and "steps/s" in printed
    assert not (tmp_path / "adv").exists()
    # A time budget no design fits (a millisecond) is refused before anything is written.
    with pytest.raises(ConfigError, match="too short .*no smaller design fits"):
        advise(cfg, tmp_path / "adv", time_budget=1e-3, say=lambda s: None)
    assert not (tmp_path / "adv").exists()
    # What would fit, from a fixed trial (the refusal's suggestion must not hang on how busy the machine is).
    from replaylab.advisor.run import plan_document
    from replaylab.advisor.timing import Trial, estimate, what_fits

    design, trial = plan_advice(cfg).design, Trial(steps_per_s=10.0, overhead_s=1.0)
    full = estimate(plan_document(design), set(), trial, 1).seconds
    one_lr = estimate(plan_document(replace(design, lrs=design.lrs[:1])), set(), trial, 1).seconds
    assert one_lr < full
    assert what_fits(cfg, design, trial, 1, one_lr, plan_document).startswith("--lr-factors 1 (about ")
    assert what_fits(cfg, design, trial, 1, one_lr / 2, plan_document) == ""


def test_an_instruction_target_is_counted_in_rows(isolated_home, pc_corpus, prose_corpus, tiny_tokenizer):
    """Budgets of an instruction target count whole-example rows, as its runs read it (not tokens / seq_len)."""
    from replaylab.data.rows import DocumentRows
    from replaylab.data.store import get_store

    cfg = preset_config(
        pc_corpus, prose_corpus, tiny_tokenizer, budget=None, target_options={"format": "prompt_completion"}
    )
    plan = plan_advice(cfg)
    rows = DocumentRows(get_store(str(pc_corpus), tiny_tokenizer, {"format": "prompt_completion"}))
    assert plan.design.num_available == plan.design.budget == rows.num_sequences("train", cfg.seq_len)
    assert rows.num_sequences("train", cfg.seq_len) != rows.store.num_sequences("train", cfg.seq_len)
    assert f"train rows (whole examples packed into {cfg.seq_len + 1} tokens)" in plan.describe()


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_hf_model_full_and_lora(hf_world, tmp_path, lora):
    """Full fine-tuning also scores forgetting on a multiple-choice file and an lm-eval task (real lm_eval)."""
    world = hf_world
    tasks = {} if lora else {"mc_tasks": [BASQUE_MC], "lm_eval_tasks": ["replaylab_basque_vocab"]}
    cfg = AdviceConfig(
        model=world["model"],
        target=world["code"],
        target_options={"glob": "*.py"},
        replay=world["prose"],
        lora=lora,
        budget=16,
        epochs=1,
        fractions=[0.5],
        lr_factors=[1.0],
        seeds=[0, 1],
        seq_len=32,
        batch_size=4,
        eval_sequences=8,
        lr=1e-2,
        **tasks,
    )
    out = tmp_path / "adv"
    advice = advise(cfg, out, workers=1, say=lambda s: None)
    table = load_results(out / "sweep")
    assert len(table) == 10 and (table["status"] == "done").all()
    assert advice.forgetting["base"] is not None  # the pretrained model's own general loss
    _check_invariants(advice)
    assert advice.command.startswith("replaylab finetune --model") and ("--lora" in advice.command) == lora
    assert (out / "report" / "report.html").is_file() and not (out / "recommended.yaml").exists()
    if lora:
        assert advice.tasks == [] and not (out / "tasks.json").exists()
        return
    _check_tasks(advice, ["basque_vocab", "replaylab_basque_vocab"], base_seeds=1)  # one pretrained model
    assert "--mc-task" in advice.command and "--lm-eval-task replaylab_basque_vocab" in advice.command
    # The base is scored as the runs score: their own scores of the pretrained model before step 1 agree.
    base = json.loads((out / "tasks.json").read_text())["base"]["all"]
    sub = table[table["budget"] == advice.sub_budget]
    assert len(sub) == 4 and len(json.loads((out / "tasks.json").read_text())["runs"]) == 4
    for rid in sub["run_id"]:
        initial = json.loads((out / "sweep" / "runs" / rid / "manifest.json").read_text())["initial"]["mc"]
        assert initial["basque_vocab"] == base["basque_vocab"]


def test_an_advice_without_tasks_keeps_its_identity_and_run_ids():
    """Task fields are added fields: empty, the advice folder's identity and every run id are those of before
    (pinned from the advisor before tasks existed), so existing advice folders resume unchanged."""
    import hashlib

    from replaylab.advisor.design import make_design, runs_of

    pinned = [("5a6f58f5e774379b", "bebd9843fa1c1b04"), ("add034b98f0e5ca3", "c6cf76b02c5f37f6")]
    for cfg, (identity, ids) in zip(
        (
            AdviceConfig(model="preset:tiny", target="instructions", budget=64),
            AdviceConfig(model="HuggingFaceTB/SmolLM2-135M", target="my.jsonl", lora=True, budget=64),
        ),
        pinned,
    ):
        runs = runs_of(make_design(cfg, 64, 8))
        assert cfg.identity() == identity
        assert hashlib.sha256(",".join(sorted(r.run_id for r in runs)).encode()).hexdigest()[:16] == ids
        # with a task, an HF advice changes only the runs that score it (at the sub-budget); a preset none
        tasked = runs_of(make_design(replace(cfg, mc_tasks=[BASQUE_MC]), 64, 8))
        changed = {r.coords["budget"] for r, t in zip(runs, tasked) if r.run_id != t.run_id}
        assert changed == (set() if cfg.kind == "preset" else {16})


def test_task_forgetting_points_the_way_its_scores_do():
    """A synthetic run table and task scores (the answer reads both): replay keeps more of the task, then less;
    the verdict's sentence follows the interval, the changes are the differences of the means."""
    rows, scores = [], {"base": {"all": {"quiz": {"acc": 0.7, "acc_norm": 0.7, "n": 100}}}, "runs": {}}
    for seed, noise in ((0, 0.0), (1, 0.01), (2, -0.01)):
        for budget, loss in ((8, 7.0), (16, 6.6), (32, 6.2), (64, 5.8)):
            rows.append((budget, 0.0, seed, loss + noise))
        rows.append((16, 0.5, seed, 6.3 + noise))
    table = pd.DataFrame(
        [{"run_id": f"r{i}", "status": "done", "selected": True, "budget": b, "rho": r, "seed": s, "lr": 1e-3,
          "target_val_loss": x, "target_test_loss": x, "generic_test_loss": 5.0} for i, (b, r, s, x) in enumerate(rows)]
    )  # fmt: skip

    def ask(none_acc: float, replay_acc: float):
        for i, (b, r, s, _) in enumerate(rows):
            acc = (replay_acc if r else none_acc) + s * 0.01
            scores["runs"][f"r{i}"] = {"quiz": {"acc": acc, "acc_norm": acc, "n": 100}}
        return answer(
            table, budget=64, sub_budget=16, form="loglinear", base_general=4.9, task_scores=scores, n_boot=200
        )

    better = ask(0.40, 0.60)
    t = next(t for t in better.tasks if t.metric == "acc")
    assert t.base == 0.7 and t.no_replay == pytest.approx(0.41) and t.replay == pytest.approx(0.61)
    assert t.replay_vs_none.low > 0 and t.none_vs_base.high < 0
    assert "Task quiz (acc: base 0.700, no replay 0.410, R=0.5 0.610): replay reduces forgetting" in better.verdict
    worse = ask(0.60, 0.40)
    assert next(t for t in worse.tasks if t.metric == "acc").replay_vs_none.high < 0
    assert "): replay forgets more, R - none -0.200" in worse.verdict
    same = ask(0.50, 0.50)
    assert "no measurable difference" in same.verdict

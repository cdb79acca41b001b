"""From runs to multipliers: sweep folders (through `load_results` and from bare manifests), CSV
tables, LR and rho selection on the select half, and the `replaylab analyze` command."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from analysis_fixtures import BUDGET, FT_WORTH, MT_WORTH, make_sweep

from replaylab.analysis import AnalysisError, analyze_runs, load_sweep_table, select_cells
from replaylab.cli import main as cli

TRUE = {"finetune": FT_WORTH[0.5], "midtrain_replay": MT_WORTH[(0.5, 1.0)], "midtrain_best": MT_WORTH[(0.5, 0.5)]}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return make_sweep(tmp_path_factory.mktemp("sweep"))


@pytest.fixture(scope="module")
def analysis(sweep):
    return analyze_runs(load_sweep_table(sweep), form="paper", n_boot=200)


def test_headline_multipliers_match_the_truth(analysis):
    assert set(analysis.domains) == {"code", "math"}
    for dom in analysis.domains.values():
        assert not dom.law.diagnostics.degenerate
        kinds = {c.kind: c for c in dom.comparisons}
        assert set(kinds) == set(TRUE)
        for kind, c in kinds.items():
            assert c.efficiency.multiplier == pytest.approx(TRUE[kind], rel=0.15), (dom.domain, kind)
            assert c.ci is not None and c.ci.low < c.efficiency.multiplier < c.ci.high
            assert c.baseline["rho"] == 0 and c.baseline["alpha"] == 1
        assert kinds["finetune"].candidate["rho"] == 0.5
        assert (kinds["midtrain_best"].candidate["rho"], kinds["midtrain_best"].candidate["alpha"]) == (0.5, 0.5)
        assert kinds["midtrain_replay"].candidate["alpha"] == 1.0
        # No-replay fine-tuning is "worth" about its own budget under the law.
        assert kinds["finetune"].efficiency.baseline_effective_data == pytest.approx(BUDGET, rel=0.1)


def test_lr_is_chosen_per_cell_and_failed_runs_are_ignored(analysis):
    for dom in analysis.domains.values():
        cells = pd.concat([dom.reference, dom.cells])
        assert (cells["lr"] == 3e-3).all()  # the fixture's better LR, on both halves
        assert (cells["n_seeds"] == 3).all() and (cells["n_lrs"] == 2).all()
    assert not (analysis.runs["run_id"] == "diverged0").any()


def test_summary_frame_and_json_round_trip(analysis):
    import json

    frame = analysis.summary_frame()
    assert len(frame) == 6 and frame["multiplier"].notna().all() and frame["ci_low"].notna().all()
    blob = json.loads(json.dumps(analysis.to_dict(), default=str))
    assert blob["domains"]["code"]["law"]["form"] == "paper"


def test_same_runs_and_seed_give_identical_results(sweep, analysis):
    again = analyze_runs(load_sweep_table(sweep), form="paper", n_boot=200)
    assert again.to_dict() == analysis.to_dict()


def test_bare_manifests_give_the_same_numbers(tmp_path, analysis):
    root = make_sweep(tmp_path, with_plan=False)
    again = analyze_runs(load_sweep_table(root), form="paper", n_boot=200)
    pd.testing.assert_frame_equal(again.summary_frame(), analysis.summary_frame())


def test_selection_uses_the_select_half_not_the_report_half():
    rows = []
    for b, loss in ((1, 3.0), (2, 2.7), (4, 2.5), (8, 2.35)):
        rows.append(
            dict(strategy="reference", target_domain="t", seed=0, budget=b, target_test_loss=loss, target_val_loss=loss)
        )
    # LR 1e-3 looks better on the report half but worse on the select half: 3e-3 must be chosen.
    rows.append(
        dict(
            strategy="finetune",
            target_domain="t",
            seed=0,
            rho=0.0,
            budget=2,
            lr=1e-3,
            target_val_loss=2.80,
            target_test_loss=2.60,
        )
    )
    rows.append(
        dict(
            strategy="finetune",
            target_domain="t",
            seed=0,
            rho=0.0,
            budget=2,
            lr=3e-3,
            target_val_loss=2.70,
            target_test_loss=2.72,
        )
    )
    # rho 0.75 wins on the report half, rho 0.5 on the select half.
    rows.append(
        dict(
            strategy="finetune",
            target_domain="t",
            seed=0,
            rho=0.5,
            budget=2,
            lr=3e-3,
            target_val_loss=2.55,
            target_test_loss=2.56,
        )
    )
    rows.append(
        dict(
            strategy="finetune",
            target_domain="t",
            seed=0,
            rho=0.75,
            budget=2,
            lr=3e-3,
            target_val_loss=2.58,
            target_test_loss=2.50,
        )
    )
    a = analyze_runs(pd.DataFrame(rows), n_boot=100)
    c = a.domains["t"].comparisons[0]
    assert c.baseline["lr"] == 3e-3 and c.baseline["test_loss"] == 2.72
    assert c.candidate["rho"] == 0.5 and c.selection == "chosen on the select half"
    assert c.ci is None and any("one seed" in n for n in a.domains["t"].notes)


def test_missing_select_half_is_flagged_or_refused():
    rows = [
        dict(strategy="reference", target_domain="t", seed=0, budget=b, target_test_loss=3 - 0.3 * math.log(b))
        for b in (1, 2, 4)
    ]
    rows += [
        dict(strategy="finetune", target_domain="t", seed=0, rho=r, target_test_loss=l)
        for r, l in ((0.0, 2.9), (0.5, 2.8), (0.75, 2.85))
    ]
    c = analyze_runs(pd.DataFrame(rows), n_boot=100).domains["t"].comparisons[0]
    assert "REPORT half" in c.selection
    rows.append(dict(strategy="finetune", target_domain="t", seed=0, rho=0.5, lr=1e-2, target_test_loss=2.7))
    with pytest.raises(AnalysisError, match="target_val_loss"):
        select_cells(pd.DataFrame(rows))


def test_bad_tables_raise_clear_errors():
    with pytest.raises(AnalysisError, match="empty"):
        analyze_runs(pd.DataFrame())
    with pytest.raises(AnalysisError, match="'target_test_loss' column"):
        analyze_runs(pd.DataFrame([{"strategy": "reference", "target_domain": "t", "seed": 0}]))
    with pytest.raises(AnalysisError, match="strategy 'lora' is unknown"):
        analyze_runs(pd.DataFrame([{"strategy": "lora", "target_domain": "t", "seed": 0, "target_test_loss": 1.0}]))


def _write_csvs(sweep, tmp_path):
    df = load_sweep_table(sweep)
    df = df[df["status"] == "done"]
    cols = ["target_domain", "strategy", "budget", "rho", "alpha", "seed", "lr", "target_val_loss", "target_test_loss"]
    ref, cmp_ = tmp_path / "ref.csv", tmp_path / "cmp.csv"
    ref_df = df[df["strategy"] == "reference"][cols].drop(columns=["strategy", "rho", "alpha"])
    ref_df.rename(columns={"target_test_loss": "loss", "target_val_loss": "val_loss"}).to_csv(ref, index=False)
    df[df["strategy"] != "reference"][cols].to_csv(cmp_, index=False)
    return ref, cmp_


def test_cli_analyze_from_csv_matches_the_sweep(sweep, tmp_path, capsys):
    ref, cmp_ = _write_csvs(sweep, tmp_path)
    assert (
        cli(
            [
                "analyze",
                "--reference",
                str(ref),
                "--compare",
                str(cmp_),
                "--boot",
                "200",
                "--csv",
                str(tmp_path / "a.csv"),
            ]
        )
        == 0
    )
    assert cli(["analyze", str(sweep), "--boot", "200", "--csv", str(tmp_path / "b.csv"), "--cells"]) == 0
    out = capsys.readouterr().out
    assert "fine-tuning: replay vs none" in out and "95% CI" in out and "select half" in out
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    pd.testing.assert_series_equal(a["multiplier"], b["multiplier"])
    pd.testing.assert_series_equal(a["ci_low"], b["ci_low"])
    # --seeds: only the finished replicates of a sweep (here two of its three seeds)
    assert cli(["analyze", str(sweep), "--boot", "50", "--seeds", "0,2", "--csv", str(tmp_path / "s.csv")]) == 0
    assert "(seeds 0,2)" in capsys.readouterr().out
    assert (pd.read_csv(tmp_path / "s.csv")["seeds"] == 2).all()
    assert cli(["analyze", str(sweep), "--seeds", "0,x"]) == 2
    assert "--seeds '0,x'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,match",
    [
        (["analyze"], "nothing to analyze"),
        (["analyze", "/nonexistent/sweep"], "does not exist"),
        (["analyze", "--reference", "/nonexistent.csv", "--compare", "/x.csv"], "does not exist"),
        (["analyze", "--reference", "r.csv"], "go together"),
        (["report", "--reference", "r.csv", "--compare", "c.csv"], "--out"),
    ],
)
def test_cli_user_mistakes_are_one_line_exit_2(argv, match, capsys):
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1 and err.startswith(f"replaylab {argv[0]}: error:")

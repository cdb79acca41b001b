"""Figures render to PNG and SVG files, the report is self-contained, and loss curves read a real
run folder written by the training engine (stage boundaries from its config)."""

from __future__ import annotations

import pytest
from analysis_fixtures import make_sweep
from run_configs import tiny_raw

from replaylab.analysis import analyze_runs, load_sweep_table, plots
from replaylab.cli import main as cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return make_sweep(tmp_path_factory.mktemp("sweep"), seeds=(0, 1))


@pytest.fixture(scope="module")
def analysis(sweep):
    return analyze_runs(load_sweep_table(sweep), form="robust", n_boot=100)


def _check_files(paths):
    png, svg = paths
    assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 10_000
    assert b"<svg" in svg.read_bytes()[:1000]


def test_each_figure_renders(analysis, sweep, tmp_path):
    _check_files(plots.save_figure(plots.law_figure(analysis.domains["code"]), tmp_path / "law"))
    _check_files(plots.save_figure(plots.replay_figure(analysis), tmp_path / "replay"))
    _check_files(plots.save_figure(plots.heatmap_figure(analysis), tmp_path / "heat"))
    _check_files(plots.save_figure(plots.loss_curve_figure(sweep / "runs" / "run0001"), tmp_path / "curve"))
    assert not list(tmp_path.glob(".*.tmp"))  # write-then-rename left nothing behind


def test_law_figure_marks_a_degenerate_fit(tmp_path):
    import pandas as pd

    rows = [
        dict(strategy="reference", target_domain="code", seed=0, budget=b, target_test_loss=l, target_val_loss=l)
        for b, l in zip([16, 32, 64, 128, 256, 512, 1024], [6.379, 5.902, 5.432, 4.944, 4.479, 4.052, 3.698])
    ]
    rows += [
        dict(strategy="finetune", target_domain="code", seed=0, budget=64, rho=r, target_test_loss=l, target_val_loss=l)
        for r, l in ((0.0, 5.498), (0.5, 5.319), (0.75, 5.376))
    ]
    dom = analyze_runs(pd.DataFrame(rows), form="paper").domains["code"]
    fig = plots.law_figure(dom)
    assert "DEGENERATE" in fig.axes[0].get_title()
    assert any("degenerate" in n for n in dom.notes)
    _check_files(plots.save_figure(fig, tmp_path / "pilot"))


def test_svg_is_byte_identical_across_renders(analysis, tmp_path):
    a = plots.save_figure(plots.heatmap_figure(analysis), tmp_path / "a")[1].read_bytes()
    b = plots.save_figure(plots.heatmap_figure(analysis), tmp_path / "b")[1].read_bytes()
    assert a == b


def test_report_command_writes_a_self_contained_report(sweep, tmp_path, capsys):
    out = tmp_path / "rep"
    assert cli(["report", str(sweep), "--out", str(out), "--boot", "100", "--curves", "2"]) == 0
    assert "report.html" in capsys.readouterr().out
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 + 1 + 1 + 2  # 2 laws, replay, heatmap, 2 curves
    assert '<img src="figures' not in page  # nothing outside the file
    assert "Headline multipliers" in page and "select half" in page
    md = (out / "report.md").read_text()
    assert "](figures/law_code.png)" in md and "mid-training: best schedule vs baseline" in md
    for name in ("law_code", "law_math", "replay_fraction", "midtrain_heatmap", "curve_01", "curve_02"):
        assert (out / "figures" / f"{name}.png").exists() and (out / "figures" / f"{name}.svg").exists()
    assert (out / "summary.csv").exists() and (out / "analysis.json").exists()


def test_loss_curves_of_a_real_training_run(tmp_path, prose_store, code_store, tiny_tokenizer, isolated_home):
    from replaylab.config import from_dict
    from replaylab.runconfig import RunConfig
    from replaylab.train import run_training

    raw = tiny_raw(prose_store, code_store, tiny_tokenizer)
    run = tmp_path / "run"
    run_training(from_dict(RunConfig, raw), run)
    records = [__import__("json").loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert plots._stage_bounds(run, records) == [(0, "pretrain"), (8, "finetune")]
    fig = plots.loss_curve_figure(run)
    ax = fig.axes[0]
    assert any(list(line.get_xdata()) == [8, 8] for line in ax.get_lines())  # the stage boundary
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= {"code held-out loss", "generic held-out loss"}
    _check_files(plots.save_figure(fig, tmp_path / "curve"))


@pytest.mark.slow
def test_real_tiny_sweep_end_to_end(tmp_path, prose_store, code_store, tiny_tokenizer, isolated_home, capsys):
    """A real sweep (trained runs, the sweep engine's own folder) analyzed and reported by the CLI."""
    import yaml

    from replaylab.sweep import prepare_sweep
    from replaylab.sweep.local import worker_loop

    exp = {
        "name": "analysis-e2e",
        "base": {
            "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64},
            "data": {
                "tokenizer": tiny_tokenizer,
                "seq_len": 32,
                "domains": {"generic": {"source": str(prose_store.path)}, "code": {"source": str(code_store.path)}},
            },
            "train": {
                "total_steps": 16,
                "batch_size": 4,
                "precision": "fp32",
                "compile": "off",
                "log_every": 4,
                "progress": "off",
            },
            "eval": {"max_sequences": 8, "batch_size": 8},
            "logging": {"tensorboard": False},
        },
        "target": "code",
        "target_fraction": "1/16",
        "seeds": [0, 1],
        "strategies": [
            {"strategy": "reference", "grid": {"budget_multiple": [1, 2, 4]}, "args": {"epochs": 2}},
            {"strategy": "finetune", "grid": {"multiplier": [1, 2]}, "lrs": [1e-3, 3e-3], "args": {"epochs": 2}},
        ],
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    out = tmp_path / "sweep"
    prepare_sweep(path, out)
    worker_loop(out, threads=1)
    assert cli(["analyze", str(out), "--form", "loglinear", "--boot", "100"]) == 0
    text = capsys.readouterr().out

    assert "fine-tuning: replay vs none" in text and "rho=0.5" in text
    assert cli(["report", str(out), "--form", "loglinear", "--boot", "100", "--curves", "2"]) == 0
    page = (out / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1 + 1 + 2  # law, replay fraction, 2 loss curves

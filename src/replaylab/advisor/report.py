"""The answer written down: advice.json, advice.md, the run to train with it, and an HTML report with the
loss-vs-fraction and data-efficiency figures (drawn with analysis.plots' figure helpers, tables with
analysis.report's)."""

from __future__ import annotations

import html
import json
import math
import shlex
from pathlib import Path

from replaylab.advisor.answer import Advice
from replaylab.advisor.design import Design
from replaylab.advisor.forgetting import task_rows


def finetune_command(advice: Advice, design: Design, out: Path | None = None) -> str:
    """The ready-to-run command that trains the recommended recipe on the whole budget (`out`: the advice folder,
    which holds a preset's recommended.yaml)."""
    c = design.config
    r, lr = advice.recommended_rho, advice.recommended_lr
    if c.kind == "preset":
        return shlex.join(["replaylab", "train", str((out or Path(".")) / "recommended.yaml"), "--out", "runs/advised"])
    args = [
        "replaylab",
        "finetune",
        "--model",
        c.model,
        "--target",
        c.target,
        "--replay",
        c.replay,
        "--replay-fraction",
        f"{r:g}",
        "--lr",
        f"{lr:.3g}",
        "--epochs",
        f"{c.value('epochs'):g}",
        "--budget",
        str(design.budget),
        "--seq-len",
        str(c.value("seq_len")),
        "--batch-size",
        str(c.value("batch_size")),
    ]
    if c.lora:
        args.append("--lora")
    for task in c.mc_tasks:  # the same tasks, scored at the end of that run too
        args += ["--mc-task", task]
    for task in c.lm_eval_tasks:
        args += ["--lm-eval-task", task]
    if c.lm_eval_include is not None:
        args += ["--lm-eval-include", c.lm_eval_include]
    return shlex.join(args)


def replay_mixture_args(advice: Advice, design: Design) -> str:
    c = design.config
    return (
        f"ReplayMixture({c.target!r}, {c.replay!r}, replay_fraction={advice.recommended_rho:g}, "
        f"seq_len={c.value('seq_len')}, batch_size={c.value('batch_size')}, budget={design.budget}, "
        f"epochs={c.value('epochs'):g})  # peak LR {advice.recommended_lr:.3g}"
    )


def recommended_config(advice: Advice, design: Design) -> dict:
    """A preset's recommended run on the whole budget, as a `replaylab train` config."""
    from replaylab.advisor.design import Cell, _preset_run
    from replaylab.config import to_dict

    raw = to_dict(_preset_run(design, Cell(design.budget, advice.recommended_rho), advice.recommended_lr, 0))
    raw["name"] = "advised"
    return raw


def _num(v: float | None, fmt: str = ".3f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def tables(advice: Advice) -> dict[str, list[dict[str, str]]]:
    cells = [
        {
            "cell": f"R={c.rho:g} @ {c.budget}",
            "LR (select half)": f"{c.lr:.3g}" + (f" ({c.lr_edge} edge)" if c.lr_edge else ""),
            "seeds": str(c.seeds),
            "target loss (report half)": f"{c.target_loss:.3f} ± {_num(c.target_sd)}",
            "general loss": _num(c.general_loss),
        }
        for c in advice.cells
    ]
    replay = [
        {
            "R": f"{r.rho:g}",
            "vs none (effective data)": (
                f"{r.bound} {r.bound_value:.2f}x (law: {r.multiplier:.2f}x, extrapolated)"
                if r.bound
                else f"{r.multiplier:.2f}x"
                if r.multiplier is not None
                else "n/a"
            ),
            "95% interval": f"[{_num(r.low, '.2f')}, {_num(r.high, '.2f')}]",
            "target loss diff [95%]": f"{r.loss_diff:+.3f} [{r.diff_low:+.3f}, {r.diff_high:+.3f}]",
            "wins": f"{r.wins:.0%}",
        }
        for r in advice.replay
    ]
    f = advice.forgetting
    forgetting = [{"model": k.replace("_", " "), "general loss (report half)": _num(v)} for k, v in f.items()]
    return {"cells": cells, "replay": replay, "forgetting": forgetting, "tasks": task_rows(advice.tasks)}


def markdown(advice: Advice, design: Design) -> str:
    from replaylab.analysis.report import _md_table

    t = tables(advice)
    parts = [
        "# Replay advice\n",
        advice.verdict + "\n",
        "## Run it\n",
        f"```\n{advice.command}\n{advice.replay_mixture}\n```\n",
        f"## Replay vs none at {advice.sub_budget} target sequences\n",
        _md_table(t["replay"]),
        f"No-replay curve law: {advice.law}\n",
        "## Forgetting (general / replay domain)\n",
        _md_table(t["forgetting"]),
        *(
            ["## Forgetting on tasks (accuracy; changes with 95% seed-bootstrap intervals)\n", _md_table(t["tasks"])]
            if t["tasks"]
            else []
        ),
        "## Every cell\n",
        _md_table(t["cells"]),
    ]
    return "\n".join(parts)


def _figures(advice: Advice, fig_dir: Path) -> list[tuple[str, str]]:
    from replaylab.analysis.plots import _figure, save_figure

    out = []
    sub = sorted((c for c in advice.cells if c.budget == advice.sub_budget), key=lambda c: c.rho)
    fig = _figure(5.0, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    ax.errorbar(
        [c.rho for c in sub],
        [c.target_loss for c in sub],
        yerr=[0 if math.isnan(c.target_sd) else c.target_sd for c in sub],
        marker="o",
        capsize=3,
        label="target (report half)",
    )
    ax.plot([c.rho for c in sub], [c.general_loss for c in sub], marker="s", ls="--", label="general")
    ax.set_xlabel("replay fraction R")
    ax.set_ylabel("loss")
    ax.set_title(f"loss vs replay fraction at {advice.sub_budget} target sequences")
    ax.legend()
    save_figure(fig, fig_dir / "loss_vs_fraction")
    out.append(("Loss vs replay fraction (mean ± sd over seeds)", "loss_vs_fraction"))

    fig = _figure(5.0, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    curve = sorted(advice.curve, key=lambda c: c.budget)
    for c in curve:
        ax.scatter([c.budget] * len(c.target_losses), c.target_losses, color="#bbbbbb", s=10)
    ax.plot([c.budget for c in curve], [c.target_loss for c in curve], marker="o", color="#222222", label="no replay")
    for r, c in zip(advice.replay, sorted((c for c in sub if c.rho > 0), key=lambda c: c.rho)):
        ax.scatter([c.budget], [c.target_loss], marker="*", s=80, zorder=3, label=f"R={c.rho:g}")
        if r.effective_data:
            ax.hlines(c.target_loss, c.budget, r.effective_data, linestyles=":", colors="#1f77b4")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("unique target sequences")
    ax.set_ylabel("target loss (report half)")
    ax.set_title("data efficiency: replay read against the no-replay curve")
    ax.legend(fontsize=8)
    save_figure(fig, fig_dir / "data_efficiency")
    out.append(("The model's no-replay curve and each replay cell's effective data (dotted)", "data_efficiency"))
    return out


def write_answer(advice: Advice, design: Design, out: Path) -> Path:
    from replaylab.analysis.report import _html_table
    from replaylab.config import dump_yaml
    from replaylab.outputs import build_output
    from replaylab.paths import atomic_write_text

    advice.command = finetune_command(advice, design, out)
    advice.replay_mixture = replay_mixture_args(advice, design)
    atomic_write_text(out / "advice.json", json.dumps(advice.to_dict(), indent=1, default=str) + "\n")
    atomic_write_text(out / "advice.md", markdown(advice, design))
    if design.config.kind == "preset":
        atomic_write_text(out / "recommended.yaml", dump_yaml(recommended_config(advice, design)))
    t = tables(advice)
    with build_output(out / "report", "report", option="report") as tmp:
        figs = _figures(advice, tmp / "figures")
        body = [
            "<h1>Replay advice</h1>",
            f"<p>{html.escape(advice.verdict)}</p>",
            f"<pre>{html.escape(advice.command)}\n{html.escape(advice.replay_mixture)}</pre>",
            f"<h2>Replay vs none at {advice.sub_budget} target sequences</h2>",
            _html_table(t["replay"]),
            f"<p>No-replay curve law: {html.escape(advice.law)}</p>",
            *[
                f'<figure><img src="figures/{stem}.png"><figcaption>{html.escape(cap)}</figcaption></figure>'
                for cap, stem in figs
            ],
            "<h2>Forgetting</h2>",
            _html_table(t["forgetting"]),
            *(["<h2>Forgetting on tasks</h2>", _html_table(t["tasks"])] if t["tasks"] else []),
            "<h2>Every cell</h2>",
            _html_table(t["cells"]),
        ]
        atomic_write_text(
            tmp / "report.html",
            "<!doctype html><meta charset='utf-8'><title>replay advice</title>" + "\n".join(body) + "\n",
        )
        atomic_write_text(tmp / "report.md", markdown(advice, design))
    return out / "report" / "report.html"

"""The paper's figures, drawn with matplotlib's Agg canvas (no display, no pyplot global state):

  law_figure         Fig. 2: the reference law, its points, and the effective-data reading of each method
  replay_figure      Fig. 4: target loss vs replay fraction per domain, with the no-replay line
  heatmap_figure     Fig. 7: mid-training target loss over the rho x alpha grid
  loss_curve_figure  one run's losses across stages, stage boundaries marked

Each `*_figure` returns a Figure; `save_figure(fig, stem)` writes `stem.png` and `stem.svg` atomically.
"""

from __future__ import annotations

import io
import json
import math
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from replaylab.analysis.efficiency import Analysis, DomainResult
from replaylab.paths import atomic_write_bytes

COLORS = {"finetune": "#1f77b4", "midtrain": "#d62728", "reference": "#222222", "baseline": "#7f7f7f"}
READING_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def _figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, stem: str | Path) -> list[Path]:
    """Write `stem.png` and `stem.svg` (write-then-rename); SVG ids and dates are fixed so the same
    figure gives the same bytes."""
    import matplotlib

    stem = Path(stem)
    out = []
    for ext in ("png", "svg"):
        buf = io.BytesIO()
        with matplotlib.rc_context({"svg.hashsalt": "replaylab"}):
            fig.savefig(buf, format=ext, metadata={"Date": None} if ext == "svg" else {"Software": None})
        path = stem.with_suffix(f".{ext}")
        atomic_write_bytes(path, buf.getvalue())
        out.append(path)
    return out


def law_figure(dom: DomainResult) -> Figure:
    """Reference points (each seed, and the mean per budget), the fitted law, and for each headline
    comparison the horizontal reading from the method's loss to the law, down to its effective data."""
    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot()
    ref = dom.reference
    for _, row in ref.iterrows():
        ax.scatter([row["budget"]] * len(row["test_losses"]), row["test_losses"], s=12, color="#999999", zorder=2)
    ax.scatter(
        ref["budget"], ref["test_loss"], s=36, color=COLORS["reference"], zorder=3, label="reference runs (mean)"
    )
    law = dom.law
    if law is None:
        ax.set_title(f"{dom.domain}: no reference law ({'; '.join(dom.notes)[:80]})", fontsize=9)
        _log_budget_axis(ax)
        return fig
    xs = [float(ref["budget"].min()), float(ref["budget"].max())]
    readings = []
    for c in dom.comparisons:
        e = c.efficiency
        if e is None:
            continue
        for loss, eff, name in (
            (e.baseline_loss, e.baseline_effective_data, c.baseline["label"]),
            (e.loss, e.effective_data, c.candidate["label"]),
        ):
            if eff is not None:
                xs.append(eff)
            if all(abs(loss - r[0]) > 1e-12 for r in readings):
                readings.append((loss, eff, name))
    lo, hi = min(xs) / 1.5, max(xs) * 1.5
    grid = np.geomspace(lo, hi, 200)
    d = law.diagnostics
    label = f"{law.form} law: " + ", ".join(f"{k}={v:.3g}" for k, v in law.params.items())
    ax.plot(grid, law.predict(grid), color=COLORS["reference"], lw=1.5, label=label, zorder=1)
    fit_lo, fit_hi = d.budget_range
    ax.axvspan(fit_lo, fit_hi, color="#f0f0f0", zorder=0, label="fitted range")
    ax.set_xlim(lo, hi)
    ax.autoscale_view()
    y_lo, y_hi = ax.get_ylim()
    losses = [r[0] for r in readings]
    pad = 0.05 * (y_hi - y_lo)
    y_floor = min([y_lo] + [v - pad for v in losses])
    ax.set_ylim(y_floor, max([y_hi] + [v + pad for v in losses]))  # frozen: the drop lines reach the axis
    for i, (loss, eff, name) in enumerate(readings):
        color = READING_COLORS[i % len(READING_COLORS)]
        if eff is None:  # below the asymptote, or a law that does not fall: the reading never meets the law
            why = "law not inverted" if law.refusal is not None else "not invertible"
            ax.axhline(loss, color=color, ls=":", lw=1.2, label=f"{name}: {loss:.3f} ({why})")
            continue
        ax.plot([lo, eff], [loss, loss], color=color, ls="--", lw=1.2)
        ax.plot([eff, eff], [loss, y_floor], color=color, ls=":", lw=1.2)
        ax.scatter([eff], [loss], marker="D", s=30, color=color, zorder=4, label=f"{name}: x_eff={eff:.3g}")
    title = f"{dom.domain}: effective data"
    mults = [f"{c.title.split(':')[1].strip()} {c.efficiency.describe()}" for c in dom.comparisons if c.efficiency]
    if mults:
        title += "\n" + "\n".join(textwrap.wrap("; ".join(mults), 95))
    if d.degenerate:
        title += "\n" + "\n".join(textwrap.wrap("DEGENERATE FIT: " + "; ".join(d.reasons), 95))
    ax.set_title(title, fontsize=8, color="#a00000" if d.degenerate else "black")
    ax.set_ylabel("final target loss (report half)")
    _log_budget_axis(ax)
    ax.legend(fontsize=7, loc="best")
    return fig


def _log_budget_axis(ax) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xlabel("unique target budget (sequences)")
    ax.grid(True, which="major", alpha=0.3)


def _grid_axes(fig: Figure, n: int):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    return [fig.add_subplot(rows, cols, i + 1) for i in range(n)]


def replay_figure(analysis: Analysis) -> Figure:
    """Target loss vs replay fraction rho (alpha = 1), one panel per domain; error bars are the seeds'
    standard deviation; the dashed line is the no-replay baseline of each strategy."""
    doms = [d for d in analysis.domains.values() if not d.cells.empty]
    fig = _figure(4.6 * min(max(len(doms), 1), 3), 3.8 * math.ceil(max(len(doms), 1) / 3))
    for ax, dom in zip(_grid_axes(fig, max(len(doms), 1)), doms):
        for (strategy, budget), g in dom.cells[dom.cells["alpha"] == 1.0].groupby(["strategy", "budget"], dropna=False):
            g = g.sort_values("rho")
            color = COLORS.get(strategy, "#444444")
            tag = f"{strategy}" + (f" (budget {budget:g})" if not _isnan(budget) else "")
            err = np.nan_to_num(g["test_std"].to_numpy(float))
            ax.errorbar(g["rho"], g["test_loss"], yerr=err, marker="o", color=color, capsize=3, label=tag)
            base = g[g["rho"] == 0.0]
            if not base.empty:
                ax.axhline(
                    float(base["test_loss"].iloc[0]),
                    color=color,
                    ls="--",
                    lw=1,
                    alpha=0.7,
                    label=f"{strategy}: no replay",
                )
        ax.set_title(dom.domain, fontsize=10)
        ax.set_xlabel("replay fraction rho (generic share of stage 2)")
        ax.set_ylabel("final target loss (report half)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def _isnan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def heatmap_figure(analysis: Analysis) -> Figure | None:
    """Mid-training target loss over rho (rows) x alpha (columns), one panel per domain, each square
    annotated with its loss and its multiplier over the rho = 0, alpha = 1 baseline. None if no
    domain has mid-training runs."""
    doms = [d for d in analysis.domains.values() if not d.cells.empty and (d.cells["strategy"] == "midtrain").any()]
    if not doms:
        return None
    fig = _figure(4.8 * min(len(doms), 3), 4.0 * math.ceil(len(doms) / 3))
    for ax, dom in zip(_grid_axes(fig, len(doms)), doms):
        mt = dom.cells[dom.cells["strategy"] == "midtrain"]
        loss = mt.pivot_table(index="rho", columns="alpha", values="test_loss", aggfunc="mean")
        mult = mt.pivot_table(index="rho", columns="alpha", values="multiplier", aggfunc="mean", dropna=False)
        loss = loss.sort_index().sort_index(axis=1, ascending=False)
        mult = mult.reindex(index=loss.index, columns=loss.columns)
        im = ax.imshow(loss.to_numpy(float), cmap="viridis_r", aspect="auto")
        vals = loss.to_numpy(float)
        mid = np.nanmean(vals)
        for i in range(vals.shape[0]):
            for j in range(vals.shape[1]):
                if np.isnan(vals[i, j]):
                    continue
                m = mult.to_numpy(float)[i, j]
                text = f"{vals[i, j]:.3f}" + ("" if np.isnan(m) else f"\n{m:.2f}x")
                ax.text(
                    j, i, text, ha="center", va="center", fontsize=7, color="white" if vals[i, j] > mid else "black"
                )
        ax.set_xticks(range(len(loss.columns)), [f"{a:g}" for a in loss.columns])
        ax.set_yticks(range(len(loss.index)), [f"{r:g}" for r in loss.index])
        ax.set_xlabel("alpha (share of target data in stage 2)")
        ax.set_ylabel("rho (replay fraction)")
        title, color = f"{dom.domain}: mid-training target loss", "black"
        if dom.law is None or dom.law.refusal is not None:
            title += "\nno multipliers: " + ("no reference law" if dom.law is None else "the law does not fall")
        elif dom.law.diagnostics is not None and dom.law.diagnostics.degenerate:  # the flag goes where its numbers go
            title, color = title + "\nmultipliers read through a DEGENERATE fit", "#a00000"
        ax.set_title(title, fontsize=10, color=color)
        fig.colorbar(im, ax=ax, shrink=0.8, label="target loss")
    return fig


def _stage_bounds(run_dir: Path, records: list[dict]) -> list[tuple[int, str]]:
    """(start step, stage name) of every stage: from config.yaml when it parses, else from the stage
    recorded on eval lines."""
    try:
        from replaylab.config import from_dict, load_yaml
        from replaylab.runconfig import RunConfig

        cfg = from_dict(RunConfig, load_yaml(run_dir / "config.yaml"))
        return [(s, st.name) for s, st in zip(cfg.stage_starts(), cfg.stages)]
    except Exception:  # a config from another version: fall back on what the metrics say
        seen, out = set(), []
        for r in records:
            if r.get("type") == "eval" and r.get("stage") is not None and r["stage"] not in seen:
                seen.add(r["stage"])
                out.append((0 if not out else int(r["step"]), str(r["stage"])))
        return out


def loss_curve_figure(run_dir: str | Path, title: str | None = None) -> Figure:
    """Training loss and held-out eval losses of one run over steps, stage boundaries as vertical lines."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    records = (
        [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if path.exists()
        else []
    )
    fig = _figure(6.4, 3.8)
    ax = fig.add_subplot()
    train = [(r["step"], r["loss"]) for r in records if r.get("type") == "train" and r.get("loss") is not None]
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="#bbbbbb", lw=1, label="train loss (mixture)")
    evals: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        if r.get("type") == "eval" and r.get("test_loss") is not None:
            evals.setdefault(str(r.get("domain")), []).append((r["step"], r["test_loss"]))
    for i, (dom, pts) in enumerate(sorted(evals.items())):
        steps, losses = zip(*sorted(pts))
        ax.plot(
            steps, losses, marker="o", ms=3, color=READING_COLORS[i % len(READING_COLORS)], label=f"{dom} held-out loss"
        )
    for step, name in _stage_bounds(run_dir, records):
        if step > 0:
            ax.axvline(step, color="black", ls="--", lw=0.8)
        ax.annotate(
            name,
            xy=(step, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -10),
            textcoords="offset points",
            fontsize=7,
        )
    ax.set_xlim(left=0)  # stage 1 starts at step 0 even when the first log line comes later
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title or run_dir.name, fontsize=9)
    ax.grid(True, alpha=0.3)
    if train or evals:
        ax.legend(fontsize=7, loc="best")
    return fig

"""Tables as text, and the report: a self-contained HTML page (figures embedded) plus Markdown.

`summary_rows(analysis)` formats the headline table once, for the terminal (`replaylab analyze`), the
Markdown and the HTML. `write_report(analysis, out_dir, sweep_dir=...)` writes, all at once (the
folder is built beside its final place and renamed): report.html, report.md, analysis.json,
summary.csv and figures/*.png|svg.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from pathlib import Path

import pandas as pd

from replaylab.analysis.efficiency import Analysis
from replaylab.outputs import build_output

SELECTION_NOTE = (
    "LR, best rho and best alpha are chosen on the select half of each domain's held-out data "
    "(target_val_loss); losses and multipliers are reported on the other half (target_test_loss)."
)


def _num(v, fmt: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return format(v, fmt)


def summary_rows(analysis: Analysis) -> list[dict[str, str]]:
    """The headline comparisons as strings, one dict per row (same keys for every row)."""
    rows = []
    pct = f"{analysis.level:.0%} CI"
    for dom in analysis.domains.values():
        for c in dom.comparisons:
            e = c.efficiency
            mult = "-" if e is None else (e.describe() if e.multiplier is None else f"{e.multiplier:.3f}x")
            ci = "-" if c.ci is None else f"[{_num(c.ci.low, '.2f')}, {_num(c.ci.high, '.2f')}]"
            flags = [x for x in ((e.note if e else "no reference law"), c.ci_note) if x]
            if c.selection != "chosen on the select half":
                flags.append(c.selection)
            rows.append(
                {
                    "domain": dom.domain,
                    "comparison": c.title,
                    "budget": _num(c.candidate.get("budget")),
                    "baseline": _short(c.baseline),
                    "baseline loss": _num(c.baseline["test_loss"]),
                    "candidate": _short(c.candidate),
                    "candidate loss": _num(c.candidate["test_loss"]),
                    "seeds": str(min(c.baseline["n_seeds"], c.candidate["n_seeds"])),
                    "x_eff baseline": _num(e.baseline_effective_data if e else None),
                    "x_eff candidate": _num(e.effective_data if e else None),
                    "multiplier": mult,
                    pct: ci,
                    "notes": "; ".join(flags),
                }
            )
    return rows


def _short(cell: dict) -> str:
    """A cell in a few characters: its grid point and its chosen LR (the strategy is in the comparison)."""
    return f"rho={_num(cell.get('rho'), 'g')} alpha={_num(cell.get('alpha'), 'g')} lr={_num(cell['lr'], '.3g')}"


def cell_rows(analysis: Analysis, domain: str) -> list[dict[str, str]]:
    dom = analysis.domains[domain]
    rows = []
    for _, r in dom.reference.iterrows():
        rows.append(
            {
                "cell": r["label"],
                "lr": _num(r["lr"], ".3g"),
                "seeds": str(r["n_seeds"]),
                "select loss": _num(r["val_loss"]),
                "report loss": _num(r["test_loss"]),
                "std": _num(r["test_std"], ".3f"),
                "generic loss": _num(r["generic_test_loss"]),
                "x_eff": "-",
                "multiplier": "-",
                "CI": "-",
                "notes": "",
            }
        )
    for _, r in dom.cells.iterrows():
        ci = "-" if math.isnan(r["ci_low"]) else f"[{_num(r['ci_low'], '.2f')}, {_num(r['ci_high'], '.2f')}]"
        rows.append(
            {
                "cell": r["label"],
                "lr": _num(r["lr"], ".3g"),
                "seeds": str(r["n_seeds"]),
                "select loss": _num(r["val_loss"]),
                "report loss": _num(r["test_loss"]),
                "std": _num(r["test_std"], ".3f"),
                "generic loss": _num(r["generic_test_loss"]),
                "x_eff": _num(r["effective_data"]),
                "multiplier": _num(r["multiplier"], ".3f"),
                "CI": ci,
                "notes": str(r["flags"] or ""),
            }
        )
    return rows


def _md_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "_none_\n"
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(r[k].replace("|", "/") for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _html_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    keys = list(rows[0])
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(r[k])}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figures(analysis: Analysis, fig_dir: Path, sweep_dir: Path | None, max_curves: int) -> list[tuple[str, str]]:
    """Render every figure; returns (caption, file stem) pairs in report order."""
    from replaylab.analysis import plots

    out: list[tuple[str, str]] = []
    for name, dom in analysis.domains.items():
        if dom.law is not None:
            plots.save_figure(plots.law_figure(dom), fig_dir / f"law_{name}")
            out.append((f"{name}: reference law and effective-data readings (Fig. 2)", f"law_{name}"))
    if any(not d.cells.empty for d in analysis.domains.values()):
        plots.save_figure(plots.replay_figure(analysis), fig_dir / "replay_fraction")
        out.append(("Target loss vs replay fraction, alpha = 1; dashed: no replay (Fig. 4)", "replay_fraction"))
    heat = plots.heatmap_figure(analysis)
    if heat is not None:
        plots.save_figure(heat, fig_dir / "midtrain_heatmap")
        out.append(
            (
                "Mid-training target loss over rho x alpha, with multipliers over rho=0, alpha=1 (Fig. 7)",
                "midtrain_heatmap",
            )
        )
    if sweep_dir is not None and analysis.runs is not None and max_curves > 0:
        # Loss curves of the runs behind the headline numbers: each comparison's baseline and candidate (first seed).
        wanted: list[tuple[str, str]] = []
        for dom in analysis.domains.values():
            for c in dom.comparisons:
                for cell in (c.baseline, c.candidate):
                    if (dom.domain, cell["label"]) not in wanted:
                        wanted.append((dom.domain, cell["label"]))
        seen = set()
        for domain, label in wanted:
            if len(seen) >= max_curves:
                break
            runs = analysis.runs[analysis.runs["target_domain"] == domain]
            match = [r for _, r in runs.iterrows() if _label(r) == label]
            run_dir = sweep_dir / "runs" / str(match[0]["run_id"]) if match else None
            if run_dir is None or not (run_dir / "metrics.jsonl").exists():
                continue
            seen.add((domain, label))
            stem = f"curve_{len(seen):02d}"
            title = f"{domain}: {label}, seed {match[0]['seed']:g}, lr {_num(match[0]['lr'], '.3g')}"
            plots.save_figure(plots.loss_curve_figure(run_dir, title=title), fig_dir / stem)
            out.append((f"Loss curves: {title} (dashed: stage boundaries)", stem))
    return out


def _label(run: pd.Series) -> str:
    from replaylab.analysis.tables import _cell_label

    return _cell_label(run)


def write_report(
    analysis: Analysis,
    out_dir: str | Path,
    *,
    source: str = "",
    sweep_dir: str | Path | None = None,
    max_curves: int = 6,
    identity: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write report.html (self-contained), report.md, analysis.json, summary.csv and figures/ into
    `out_dir`, replaced as a whole when it is a report of the same runs (`identity`: by default the sweep
    folder's absolute path), or of other runs with `overwrite` (replaylab.outputs). Returns report.html."""
    out_dir = Path(out_dir)
    sweep = Path(sweep_dir) if sweep_dir is not None else None
    if identity is None and sweep is not None:
        identity = os.path.abspath(sweep)
    with build_output(out_dir, "report", identity, overwrite=overwrite, describe="of other runs") as tmp:
        fig_dir = tmp / "figures"
        fig_dir.mkdir()
        figs = _figures(analysis, fig_dir, sweep, max_curves)
        summary = summary_rows(analysis)
        md = [
            "# replaylab data-efficiency report\n",
            f"Source: `{source}`\n" if source else "",
            f"Law form: **{analysis.form}**; bootstrap: {analysis.n_boot} resamples of seeds, "
            f"{analysis.level:.0%} percentile intervals.\n",
            f"_{SELECTION_NOTE}_\n",
            "## Headline multipliers\n",
            _md_table(summary),
        ]
        page = [
            "<h1>replaylab data-efficiency report</h1>",
            f"<p>Source: <code>{html.escape(source)}</code></p>" if source else "",
            f"<p>Law form: <b>{analysis.form}</b>; bootstrap: {analysis.n_boot} resamples of seeds, "
            f"{analysis.level:.0%} percentile intervals.</p>",
            f"<p><em>{html.escape(SELECTION_NOTE)}</em></p>",
            "<h2>Headline multipliers</h2>",
            _html_table(summary),
        ]
        for note in analysis.notes:
            md.append(f"- {note}\n")
            page.append(f"<p class=note>{html.escape(note)}</p>")
        for name, dom in analysis.domains.items():
            law = dom.law.diagnostics.summary() if dom.law is not None and dom.law.diagnostics else "no reference law"
            md += [f"## Domain `{name}`\n", f"Reference law: `{law}`\n"]
            page += [
                f"<h2>Domain <code>{html.escape(name)}</code></h2>",
                f"<p>Reference law: <code>{html.escape(law)}</code></p>",
            ]
            for note in dom.notes:
                md.append(f"- **note:** {note}\n")
                page.append(f"<p class=note><b>note:</b> {html.escape(note)}</p>")
            rows = cell_rows(analysis, name)
            md += ["### Cells (each at its chosen LR)\n", _md_table(rows)]
            page += ["<h3>Cells (each at its chosen LR)</h3>", _html_table(rows)]
        md.append("## Figures\n")
        page.append("<h2>Figures</h2>")
        for caption, stem in figs:
            md.append(f"### {caption}\n\n![{caption}](figures/{stem}.png)\n")
            data = base64.b64encode((fig_dir / f"{stem}.png").read_bytes()).decode("ascii")
            page.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        style = (
            "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;font-size:0.85em;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#f3f3f3}"
            "img{max-width:100%}.note{color:#8a4b00}figure{margin:1.5em 0}"
        )
        doc = (
            f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>replaylab report</title>'
            f"<style>{style}</style></head><body>{''.join(page)}</body></html>\n"
        )
        (tmp / "report.html").write_text(doc, encoding="utf-8")
        (tmp / "report.md").write_text("\n".join(md), encoding="utf-8")
        (tmp / "analysis.json").write_text(
            json.dumps(analysis.to_dict(), indent=1, default=str) + "\n", encoding="utf-8"
        )
        analysis.summary_frame().to_csv(tmp / "summary.csv", index=False)
    return out_dir / "report.html"

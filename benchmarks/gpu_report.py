"""Read what benchmarks/gpu_check.sh left (its results folder, or the BUNDLE .tgz) and print it as the
Markdown that BENCHMARKS.md records: the machine, each part's status, and per part the numbers that decide
something (is each attention kernel bit-reproducible, and what the math kernel costs; ours against
transformers.Trainer; each lever against ours/auto; the tests' tally). It prints what was measured and
says what is missing; it decides nothing.

    python benchmarks/gpu_report.py gpu_out
    python benchmarks/gpu_report.py /work/.device/.../gpu_check.tgz
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
from pathlib import Path

from replaylab.errors import one_line


def load(folder: Path, name: str) -> dict | None:
    path = folder / name
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def tail(folder: Path, name: str, lines: int = 1) -> str:
    path = folder / name
    if not path.exists():
        return "(no output)"
    text = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return "\n".join(text[-lines:]) if text else "(empty)"


def pct(x) -> str:
    return f"{x:.1%}" if isinstance(x, (int, float)) else "-"


def engine_table(record: dict) -> list[str]:
    """The throughput.py contenders of one part: tokens/s, MFU, warm-up, first loss, ratio to ours/auto."""
    out = [
        "| contender | tokens/s | MFU | vs ours/auto | warm-up + compile s | first loss |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in record.get("contenders", {}).items():
        vs = f"{c['vs_auto']:.3f}x" if "vs_auto" in c else "-"
        out.append(
            f"| {name} | {c['tokens_per_s']:,.0f} | {pct(c.get('mfu'))} | {vs} | {c['warmup_s']:.1f} | "
            f"{c['first_loss']:.4f} |"
        )
    for key, why in record.get("skipped", {}).items():
        out.append(f"| {key} | not run: {why} | | | | |")
    return out


def report(folder: Path) -> str:
    lines = [
        "## GPU check",
        "",
        "```",
        tail(folder, "env.txt", 12),
        "```",
        "",
        "Parts:",
        "",
        "```",
        tail(folder, "parts.txt", 30),
        "```",
    ]

    det = load(folder, "determinism.json")
    lines += ["", "### determinism (train.deterministic at the paper's shapes)", ""]
    if det is None:
        lines.append("no determinism.json: the part did not run or did not get as far as its first contender")
    else:
        lines += [f"micro-batch {det['args']['batch']} x {det['args']['seq_len']}; {det['model']}", ""]
        lines += engine_table(det)
        for key, r in det.get("repeat", {}).items():
            lines.append(
                f"- {key} twice from the same weights, {r['steps']} steps: losses "
                f"{'bit-identical' if r['losses_identical'] else 'differ (max |diff| %.3g)' % r['max_loss_diff']}, "
                f"parameters {'bit-identical' if r['params_identical'] else 'differ'}"
            )
        if "repeat" not in det:
            lines.append("- no repeat comparison recorded (the part stopped before the timing rounds ended)")

    for part, title in (("hf", "hf (finetune's step vs transformers.Trainer, full)"), ("lora", "lora")):
        rec = load(folder, f"{part}.json")
        if rec is None:
            continue
        lines += [
            "",
            f"### {title}",
            "",
            f"{rec['precision']}, {rec['tokens_per_step']} tokens/step; "
            f"{rec.get('trials_planned', '?')} trials planned, {len(rec['trials'])} recorded",
            "",
            "| entry | value |",
            "|---|---|",
        ]
        for key, value in rec["summary"].items():
            shown = (
                f"{value['tokens_per_s']:,.0f} tokens/s, MFU {pct(value.get('mfu'))}"
                if isinstance(value, dict)
                else f"{value:.3f}x"
            )
            lines.append(f"| {key} | {shown} |")
        for t in rec["trials"]:
            if "error" in t:
                lines.append(f"| {t['mode']}/{t['contender']} trial {t['trial']} | error: {t['error']} |")

    lev = load(folder, "levers.json")
    if lev is not None:
        lines += ["", "### levers (paper shapes, micro-batch %d)" % lev["args"]["batch"], ""] + engine_table(lev)
        share = lev.get("optimizer_share")
        if share:
            lines.append(
                f"- optimizer step (clip + AdamW): {share['optimizer_s'] * 1e3:.2f} ms against "
                f"{share['forward_backward_s'] * 1e3:.1f} ms forward + backward: "
                f"{share['share_of_micro_step']:.2%} of a one-micro-batch step, "
                f"{share['share_at_accumulate']:.3%} at {share['accumulate']} micro-batches per step"
            )
    tuned = load(folder, "autotune.json")
    if tuned is not None:
        lines += ["", "### autotune (max-autotune compile)", ""] + engine_table(tuned)

    for part, n in (("tests", 1), ("tiny", 4), ("slice", 1)):
        if (folder / f"{part}.txt").exists():
            lines += ["", f"### {part}", "", "```", tail(folder, f"{part}.txt", n), "```"]
    return "\n".join(lines) + "\n"


def fail(message: str) -> None:
    print(f"gpu_report: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results", type=Path, help="gpu_check.sh's results folder, or its BUNDLE .tgz")
    args = p.parse_args(argv)
    if not args.results.exists():
        fail(f"{args.results} does not exist; give gpu_check.sh's results folder or its BUNDLE .tgz")
    if args.results.is_dir():
        print(report(args.results), end="")
        return
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with tarfile.open(args.results) as bundle:
                bundle.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError) as e:
            fail(
                f"{args.results} is not a bundle gpu_check.sh wrote ({one_line(e)}); give its BUNDLE .tgz or "
                "results folder"
            )
        folders = [d for d in Path(tmp).iterdir() if d.is_dir()]
        if len(folders) != 1:
            fail(f"{args.results} holds {len(folders)} folders; expected the one gpu_check.sh's BUNDLE writes")
        print(report(folders[0]), end="")


if __name__ == "__main__":
    main()

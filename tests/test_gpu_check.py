"""benchmarks/gpu_check.sh is run on lent GPU machines, minutes at a time, with no chance to fix it there: so
its plumbing is checked here, in its SMOKE=1 mode (every part at toy sizes on the CPU, the same commands and
result files). What it measures is only meaningful on a GPU; this checks that each part runs to the end,
writes its results, and that the bit-for-bit comparisons it reports come out as they must on a CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from hang import HANG_S

ROOT = Path(__file__).resolve().parents[1]
ALL_PARTS = "determinism hf levers tests lora tiny slice autotune"
# Each part's time limit, lifted: they budget a GPU session's minutes; here each part must run to its end however
# loaded the machine is (a test asserts what ran, never how fast). HANG_S only stops a hung script.
NO_LIMITS = {f"{p}_S": "3600" for p in ("DET", "HF", "LEVERS", "TESTS", "LORA", "TINY", "SLICE", "AUTOTUNE")}


@pytest.mark.slow  # ~1.5 min on 2 cores: seven parts, two of them compiling
def test_gpu_check_script_runs_every_part_in_smoke_mode(tmp_path, prose_store, code_store, tiny_tokenizer, store_home):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "SMOKE": "1",
        "PARTS": ALL_PARTS,
        "RESULTS": str(out),
        "PY": sys.executable,
        "BUNDLE": str(tmp_path / "bundle.tgz"),
        "REPLAYLAB_HOME": str(store_home),
        "GENERIC": str(prose_store.path),
        "TARGET": str(code_store.path),
        "TOK": str(tiny_tokenizer),
        **NO_LIMITS,
    }
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_S
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    status = {line.split(":")[0]: line for line in (out / "parts.txt").read_text().splitlines() if ": exit " in line}
    assert set(status) == set(ALL_PARTS.split())
    for name, line in status.items():
        assert ": exit 0 " in line, (line, (out / f"{name}.txt").read_text()[-2000:])

    det = json.loads((out / "determinism.json").read_text())
    assert set(det["repeat"]) == {"ours/auto", "ours/deterministic"}
    for key, r in det["repeat"].items():  # CPU kernels are reproducible: both copies must agree to the bit
        assert r["losses_identical"] and r["params_identical"], (key, r)
    assert {c["key"] for c in det["contenders"].values()} == {"ours/auto", "ours/deterministic"}

    hf = json.loads((out / "hf.json").read_text())
    assert {t["contender"] for t in hf["trials"] if "error" not in t} == {"ours", "ours-fused", "ours-regional", "hf"}
    lora = json.loads((out / "lora.json").read_text())
    assert {t["mode"] for t in lora["trials"]} == {"lora"}
    assert {t["contender"] for t in lora["trials"] if "error" not in t} == {"ours", "hf"}  # each one trained

    levers = json.loads((out / "levers.json").read_text())
    # On a CPU every lever says why it did not run; ours/auto, the baseline, ran.
    assert {"ours/cce", "ours/cce-exact", "ours/fp8", "ours/fp8-body"} <= set(levers["skipped"])
    assert [c["key"] for c in levers["contenders"].values()] == ["ours/auto"]
    assert levers["optimizer_share"]["share_at_accumulate"] < levers["optimizer_share"]["share_of_micro_step"]
    assert "ours/max-autotune" in json.loads((out / "autotune.json").read_text())["skipped"]

    tiny = (out / "tiny.txt").read_text()
    assert "killed c after" in tiny and "bit-identical across a, b and resumed c: True" in tiny, tiny
    assert "median tokens/s over steps 2+" in (out / "slice.txt").read_text()
    with tarfile.open(tmp_path / "bundle.tgz") as bundle:  # the results in one file, without the run folders
        names = bundle.getnames()
    assert "out/parts.txt" in names and "out/levers.json" in names and not any("/runs" in n for n in names)

    # gpu_report.py turns the bundle into BENCHMARKS.md's Markdown, from the measured numbers.
    report = subprocess.run(
        [sys.executable, "benchmarks/gpu_report.py", str(tmp_path / "bundle.tgz")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert report.returncode == 0, report.stderr
    auto = next(c for c in det["contenders"].values() if c["key"] == "ours/auto")
    assert f"{auto['tokens_per_s']:,.0f}" in report.stdout
    assert report.stdout.count("losses bit-identical, parameters bit-identical") == 2
    assert "| full/ratio |" in report.stdout and "not run: float8 matmuls need a CUDA GPU" in report.stdout

    # A results folder that holds anything is refused: no earlier result is overwritten or mistaken for new.
    again = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh"],
        cwd=ROOT,
        env={**env, "PARTS": "tests"},
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert again.returncode == 2 and "is not empty" in again.stderr
    # Nor is an existing bundle file replaced, and a file that is no bundle gets one line, not a traceback.
    again = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_S,
        env={**env, "PARTS": "tests", "RESULTS": str(tmp_path / "new")},
    )
    assert again.returncode == 2 and "exists; name a new file" in again.stderr
    assert (tmp_path / "bundle.tgz").stat().st_size > 0 and not (tmp_path / "new").exists()
    junk = tmp_path / "junk.tgz"
    junk.write_text("not a tar file")
    bad = subprocess.run(
        [sys.executable, "benchmarks/gpu_report.py", str(junk)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "is not a bundle" in bad.stderr

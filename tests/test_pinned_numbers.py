"""The numbers a refactor must not move: losses of a tiny random Llama fine-tuning run (full and LoRA) and
of the engine's tiny two-stage run, recorded before the one-run-description work (issue 21, on e35308b; the HF
values re-recorded there once tiny_world's prose stopped depending on which submodules the process had imported).

On the kind of machine that recorded them (AMD EPYC with AVX2 and no AVX-512, torch 2.13 CPU, fp32, one
thread) they must be equal bit for bit. Another CPU's kernels may round the last bits differently, so
elsewhere the check is to 1e-5 relative: still far finer than any real change to the batches, LR
schedule, loss or optimizer moves them."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
import torch
from hf_world import make_config, read_losses
from run_configs import tiny_raw
from test_trainer import records

from replaylab.config import from_dict
from replaylab.runconfig import RunConfig


def _cpu_kind() -> tuple[str, bool, str]:
    """(CPU model name, has any AVX-512, torch version): what decides the last bits of a CPU run."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor(), False, torch.__version__
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    return name, "avx512" in info, torch.__version__


RECORDED_ON = ("AMD EPYC", False, "2.13.0+cpu")


def same(got, want):
    """Bit for bit on the recording machine's kind, else to 1e-5 relative (see the module docstring)."""
    if _cpu_kind() == RECORDED_ON:
        return got == want
    return got == pytest.approx(want, rel=1e-5)


HF_FULL_TRAIN = [
    6.237035751342773,
    6.276079177856445,
    6.218259811401367,
    6.113053798675537,
    6.043689250946045,
    5.926126003265381,
    5.6986541748046875,
    5.663506507873535,
    5.749032974243164,
    5.565731048583984,
    5.671214580535889,
    5.526252746582031,
]
HF_FULL_INITIAL = {"target": 6.227088928222656, "replay": 6.237109184265137}
HF_FULL_FINAL = {"target": 5.688562870025635, "replay": 5.658512592315674}
HF_LORA_TRAIN = [
    6.2324137687683105,
    6.218282222747803,
    6.237832546234131,
    6.185832500457764,
    6.166836261749268,
    6.198420524597168,
]
HF_LORA_FINAL = {"target": 6.22797966003418, "replay": 6.219353199005127}
# test_trainer's PINNED_* (680aaf4, to 1e-5) as this machine kind computes them, bit for bit.
ENGINE_FINAL = {"generic": 6.195195198059082, "code": 6.145096778869629}
ENGINE_TRAIN = [
    6.219804525375366,
    6.234743118286133,
    6.210691452026367,
    6.1982741355896,
    6.154350280761719,
    6.217055320739746,
    6.10721230506897,
    6.122143983840942,
    6.1202404499053955,
    6.134339332580566,
    6.016338586807251,
    6.113072633743286,
]


def test_hf_finetune_numbers_are_pinned(hf_world, tmp_path):
    """A full fine-tune (R = 0.5, 12 steps, initial eval) and a LoRA one (R = 0, 6 steps), as run_finetune
    trains them: every train loss, the initial and final test losses."""
    from replaylab.hf.finetune import run_finetune

    torch.set_num_threads(1)
    # fp32 pinned: the numbers were recorded where precision auto is fp32; on a CPU with native bf16 (avx512_bf16,
    # AMX) auto is bf16 autocast, which moves them by ~1e-3, so only the forced fp32 is one value on every kind.
    full = run_finetune(make_config(hf_world, precision="fp32"), tmp_path / "full")
    assert same(read_losses(tmp_path / "full"), HF_FULL_TRAIN)
    assert same({d: r["test_loss"] for d, r in full["initial"]["losses"].items()}, HF_FULL_INITIAL)
    assert same({d: r["test_loss"] for d, r in full["final"].items()}, HF_FULL_FINAL)

    lora = run_finetune(
        make_config(
            hf_world,
            replay_fraction=0.0,
            lora__enabled=True,
            lora__r=4,
            eval__initial=False,
            save_final=False,
            precision="fp32",
        ),
        tmp_path / "lora",
    )
    assert same(read_losses(tmp_path / "lora"), HF_LORA_TRAIN)
    assert same({d: r["test_loss"] for d, r in lora["final"].items()}, HF_LORA_FINAL)
    assert "initial" not in lora or not lora["initial"]


def test_engine_numbers_are_bit_identical(prose_store, code_store, tiny_tokenizer, isolated_home, tmp_path):
    """The engine's tiny two-stage run (configs/tiny.yaml's shape: pre-training, then fine-tuning with replay
    and an optimizer reset): test_trainer pins it to 1e-5; here bit for bit on the recording machine's kind."""
    from replaylab.train import run_training

    manifest = run_training(from_dict(RunConfig, tiny_raw(prose_store, code_store, tiny_tokenizer)), tmp_path / "e")
    assert same({d: r["test_loss"] for d, r in manifest["final"].items()}, ENGINE_FINAL)
    assert same([r["loss"] for r in records(tmp_path / "e", "train")], ENGINE_TRAIN)
    assert json.loads((tmp_path / "e" / "manifest.json").read_text())["status"] == "done"

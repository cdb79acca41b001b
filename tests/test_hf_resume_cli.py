"""`replaylab finetune --resume RUN_DIR` continues a run with the config its folder holds, as `replaylab train
--resume RUN_DIR` does (the old `--resume --out RUN_DIR` with the run's flags keeps working), on
the HF tests' tiny world (tests/hf_world.py)."""

from __future__ import annotations

import json
import shutil

from hf_world import finetune_flags, read_losses


def test_finetune_resume_reads_the_config_from_the_run_folder(hf_world, tmp_path, capsys):
    from replaylab.cli import main

    flags = finetune_flags(hf_world, max_steps=4, lr=1e-3, sets=("checkpoint_every=2", "log_every=1", "progress=off"))
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["finetune", *flags, "--out", str(a)]) == 0
    assert main(["finetune", *flags, "--out", str(b)]) == 0
    # Pretend b died after step 2 (a fine-tuning run's last checkpoint; at its end it writes model/ instead).
    assert [p.name for p in (b / "checkpoints").iterdir()] == ["step_0000002"]
    shutil.rmtree(b / "model")
    manifest = json.loads((b / "manifest.json").read_text())
    (b / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    records = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    records[0]["attempt"] = 1  # survives only if the run continues from step 2 rather than starting over
    (b / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    capsys.readouterr()

    assert main(["finetune", "--resume", str(b)]) == 0  # no flags: the folder's config.yaml
    assert json.loads((b / "metrics.jsonl").read_text().splitlines()[0]).get("attempt") == 1
    assert read_losses(b) == read_losses(a)  # bit for bit
    assert (
        json.loads((b / "manifest.json").read_text())["final"] == json.loads((a / "manifest.json").read_text())["final"]
    )
    assert (b / "model").is_dir()
    assert main(["finetune", *flags, "--resume", "--out", str(b)]) == 0  # the old form: already done

    for argv, words in (
        (["--resume", str(a), "--out", str(b)], "two folders"),
        (["--resume", str(tmp_path / "nowhere")], "not a run folder"),
        (["--resume"], "needs the run folder"),
    ):
        capsys.readouterr()
        assert main(["finetune", *argv]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err


def test_a_run_folder_of_the_fine_tuning_form_resumes_with_either_command(hf_world, tmp_path, capsys):
    """Run folders written before a fine-tuning run was a RunConfig hold config.yaml in the fine-tuning form:
    they keep their identity and continue, bit for bit, under `replaylab train --resume` (one resume for every
    run) as under `replaylab finetune --resume`."""
    import yaml

    from replaylab.cli import main
    from replaylab.finetune_form import load_run_config
    from replaylab.fingerprint import finetune_view

    flags = finetune_flags(
        hf_world, max_steps=4, sets=("checkpoint_every=2", "log_every=1", "progress=off", "save_final=false")
    )
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["finetune", *flags, "--out", str(a)]) == 0
    assert main(["finetune", *flags, "--out", str(b)]) == 0
    old_form = {
        k: v
        for k, v in finetune_view(load_run_config(b / "config.yaml")).items()
        if k not in ("compile", "deterministic")
    }  # as written before those fields existed
    (b / "config.yaml").write_text(yaml.safe_dump(old_form, sort_keys=False))
    manifest = json.loads((b / "manifest.json").read_text())
    (b / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    assert [p.name for p in (b / "checkpoints").iterdir()] == ["step_0000002"]  # it continues from there
    records = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    records[0]["attempt"] = 1  # survives only if the run continues from step 2 rather than starting over
    (b / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    capsys.readouterr()
    assert main(["train", "--resume", str(b)]) == 0, capsys.readouterr().err
    assert json.loads((b / "metrics.jsonl").read_text().splitlines()[0]).get("attempt") == 1
    assert read_losses(b) == read_losses(a)
    assert (
        json.loads((b / "manifest.json").read_text())["final"] == json.loads((a / "manifest.json").read_text())["final"]
    )
    assert json.loads((b / "manifest.json").read_text())["config_hash"] == manifest["config_hash"]
    assert main(["finetune", "--resume", str(b)]) == 0  # done: nothing left to do

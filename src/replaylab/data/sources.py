"""Sources: what names a corpus, without reading it. A source is a built-in recipe name (`recipe:NAME`), a file or
folder (`path:PATH`), or `hf:org/name[:config][@revision]`; `parse_source` says which (refusing a bare name that is
both a recipe and an existing path), `source_name` names its cached stores, `check_source` fails fast on one that
cannot be read (a missing path, an unknown recipe, an hf: source while offline). `corpus.py` reads them.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from replaylab.errors import DataError

FILE_SUFFIXES = (".jsonl", ".txt", ".parquet")
HF_PREFIX = "hf:"
RECIPE_PREFIX = "recipe:"
PATH_PREFIX = "path:"
# hf:org/name[:config][@revision]
_HF_RE = re.compile(r"^hf:(?P<name>[\w.\-]+(?:/[\w.\-]+)?)(?::(?P<config>[\w.\-]+))?(?:@(?P<revision>[\w.\-/]+))?$")


# --------------------------------------------------------------------------------------------- sources
def is_hf(source: str) -> bool:
    return source.startswith(HF_PREFIX)


def parse_hf(source: str) -> tuple[str, str | None, str | None]:
    """`hf:org/name[:config][@revision]` -> (name, config, revision)."""
    m = _HF_RE.match(source)
    if not m:
        raise DataError(f"Hugging Face source {source!r} is malformed; write hf:org/name[:config][@revision]")
    return m["name"], m["config"], m["revision"]


def _recipes() -> dict:
    try:
        from replaylab.data.recipes import RECIPES
    except ImportError:  # the recipes layer is not installed yet
        return {}
    return RECIPES


def parse_source(source: str) -> tuple[str, str]:
    """(kind, what): ('hf', the hf: spec), ('recipe', its bare name) or ('path', the path as given).

    `recipe:NAME` and `path:PATH` are explicit; a bare name is a path when one exists and a recipe when it
    names one; both at once is a DataError naming the two spellings, as is a name that is neither."""
    if is_hf(source):
        parse_hf(source)
        return "hf", source
    recipes = _recipes()
    names = ", ".join(sorted(recipes)) or "none installed"
    if source.startswith(RECIPE_PREFIX):
        name = source[len(RECIPE_PREFIX) :]
        if name not in recipes:
            raise DataError(f"unknown recipe in source {source!r}; the recipes are {names}")
        return "recipe", name
    explicit = source.startswith(PATH_PREFIX)
    path = source[len(PATH_PREFIX) :] if explicit else source
    if os.path.exists(path):
        if not explicit and source in recipes:
            raise DataError(
                f"source {source!r} is ambiguous: it is the built-in recipe {source!r} and also "
                f"{os.path.abspath(source)!r}; write {RECIPE_PREFIX}{source} for the recipe or "
                f"./{source} (or {PATH_PREFIX}{source}) for the local one"
            )
        return "path", path
    if not explicit and source in recipes:
        return "recipe", source
    looks_like_path = explicit or os.sep in path or path.endswith(FILE_SUFFIXES) or path.startswith(".")
    if looks_like_path:
        raise DataError(f"corpus path {path!r} does not exist; check the path (relative to {os.getcwd()})")
    raise DataError(f"unknown source {source!r}: not a recipe ({names}), an existing file/folder, or hf:org/name")


def source_kind(source: str) -> str:
    """'hf', 'path' or 'recipe' (see `parse_source`); raises DataError for a name that is none of them."""
    return parse_source(source)[0]


def source_path(source: str) -> Path:
    """The file or folder a path source names (without its `path:` prefix)."""
    kind, what = parse_source(source)
    assert kind == "path", source
    return Path(what)


# File stems (and folder names) that say which split or part of a dataset a path is, not which dataset.
SPLIT_STEMS = frozenset({"train", "validation", "valid", "val", "test", "dev", "data", "all", "documents"})


def source_name(source: str) -> str:
    """A short, filesystem-safe name for a source, used to name cached stores (`<name>-<tok>-<key>`).

    A recipe keeps its name (`code`), hf:org/name[:config] becomes `org_name[_config]`, a file its stem
    and a folder its name (`my_corpus.jsonl` -> `my_corpus`). A split-like stem (SPLIT_STEMS:
    `mydataset/train.jsonl`, `mydataset/data/train.jsonl`) is prefixed with the nearest enclosing folder
    whose name is not split-like (`mydataset-train`), so two datasets' train.jsonl get different names."""
    kind, what = parse_source(source)
    if kind == "recipe":
        return what
    if kind == "hf":
        name, config, _ = parse_hf(source)
        raw = name.replace("/", "_") + (f"_{config}" if config else "")
    else:
        p = Path(what).resolve()
        raw = p.stem if p.is_file() else p.name
        if raw.lower() in SPLIT_STEMS:
            dataset = next((a.name for a in p.parents if a.name and a.name.lower() not in SPLIT_STEMS), None)
            raw = f"{dataset}-{raw}" if dataset else raw
    return re.sub(r"[^\w.\-]+", "_", raw).strip("._") or "corpus"


_PROBE: dict[str, tuple[float, bool]] = {}


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when HF_HUB_OFFLINE is set or huggingface.co cannot be reached within `timeout` seconds.
    Checked before calling `datasets` / the hub so an offline machine fails fast instead of hanging.
    The probe runs in a thread because a DNS lookup ignores socket timeouts; its answer is kept a minute."""
    import threading
    import time

    if any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    ):
        return False
    cached = _PROBE.get("hub")
    if cached and time.monotonic() - cached[0] < 60:
        return cached[1]
    result = [False]

    def probe() -> None:
        try:
            with socket.create_connection(("huggingface.co", 443), timeout=timeout):
                result[0] = True
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    _PROBE["hub"] = (time.monotonic(), result[0])
    return result[0]


def check_source(source: str) -> str:
    """Fail fast on a source that cannot be read (missing path, unknown recipe, hf: while offline);
    returns its kind. Cheap: reads no document."""
    kind = source_kind(source)
    if kind == "hf" and not hub_reachable():
        raise DataError(
            f"{source}: the Hugging Face hub is not reachable (offline or HF_HUB_OFFLINE set); "
            "download the dataset elsewhere and pass its .jsonl/.parquet files instead"
        )
    return kind

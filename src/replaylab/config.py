"""Typed dataclass configs: build from dicts / YAML with field-named errors, dotted overrides,
round-trip back to plain dicts, and a stable content hash. Reading the YAML itself (plain data, each key
once, bounded size, numbers) is config_yaml.py's; its names are importable from here too.

Any dataclass works. Two optional hooks on a config class:
  `_merge_defaults(cls, data: dict) -> dict`   fill a raw dict before construction (e.g. presets)
  `validate(self) -> None`                      raise ConfigError naming the field and the fix
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import hashlib
import json
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from replaylab.config_yaml import (  # noqa: F401 - MAX_CONFIG_VALUES, ConfigLoader: imported from here too
    MAX_CONFIG_VALUES,
    ConfigLoader,
    load_yaml,
    parse_number,
    parse_value,
)
from replaylab.errors import ConfigError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _choice(value: Any, choices: tuple, where: str) -> Any:
    """`value` if it is one of a Literal's `choices`, else a ConfigError naming them."""
    if isinstance(value, bool):  # YAML 1.1 reads on/off/yes/no as booleans; our choices are words
        value = "on" if value else "off"
    if value not in choices:
        raise ConfigError(
            f"{where} {value!r} is unknown; {closest(value, choices)}choose one of {', '.join(map(str, choices))}"
        )
    return value


def closest(word: Any, known: Any) -> str:
    """ "did you mean X? " for the known name closest to a mistyped `word` (difflib), or "" when none is close."""
    names = [str(k) for k in known]
    match = difflib.get_close_matches(str(word), names, n=1, cutoff=0.7) if isinstance(word, str) else []
    return f"did you mean {match[0]}? " if match else ""


@functools.lru_cache(maxsize=None)
def _literal_fields(cls: type) -> tuple[tuple[str, tuple], ...]:
    """(field name, choices) of every field of dataclass `cls` typed as a Literal."""
    hints = typing.get_type_hints(cls)
    return tuple(
        (f.name, typing.get_args(hints[f.name]))
        for f in dataclasses.fields(cls)
        if typing.get_origin(hints[f.name]) is typing.Literal
    )


def check_choices(obj: Any, prefix: str = "") -> None:
    """Raise ConfigError unless every Literal-typed field of dataclass `obj` holds one of its choices:
    what `from_dict` checks, for configs built in Python. For `validate()` hooks; `prefix` names the
    section in the message (e.g. "train.")."""
    for name, choices in _literal_fields(type(obj)):
        _choice(getattr(obj, name), choices, f"{prefix}{name}")


@functools.lru_cache(maxsize=None)
def _kinds(args: tuple) -> dict[str, type]:
    """{kind: class} of the dataclasses among a union's members that have a Literal `kind` field (the first
    member's kind is the default); {} when they have none."""
    out = {}
    for arg in args:
        if dataclasses.is_dataclass(arg) and "kind" in {f.name for f in dataclasses.fields(arg)}:
            out.update(dict.fromkeys(typing.get_args(typing.get_type_hints(arg)["kind"]), arg))
    return out


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value into type `tp`, or raise ConfigError naming `where`."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        kinds = _kinds(args)
        if kinds and isinstance(value, dict):  # a section with kinds (RunConfig.model): its `kind` picks the class
            kind = value.get("kind", next(iter(kinds)))
            if kind not in kinds:
                raise ConfigError(f"{where}.kind {kind!r} is unknown; choose one of {', '.join(map(str, kinds))}")
            return from_dict(kinds[kind], value, where)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} does not fit {_type_name(tp)}")
    if origin is typing.Literal:
        return _choice(value, args, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of fields, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        out = [_convert(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_convert(k, kt, f"{where}"): _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: {value!r} is not a finite number; give a whole number")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        if not -(2**63) <= int(value) < 2**63:  # steps, sizes and seeds end up in int64 tensors and floats
            raise ConfigError(f"{where}: {value!r} is too large for a 64-bit integer; give a realistic value")
        return int(value)
    if tp is float:
        return parse_number(value, where)
    if tp is str:
        if isinstance(value, bool):  # YAML 1.1 reads on/off/yes/no as booleans; our switches say on/off
            return "on" if value else "off"
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass `cls` from a plain dict; unknown or ill-typed fields raise ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hook = getattr(cls, "_merge_defaults", None)
    if hook is not None:
        data = hook(dict(data))
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config field {prefix}{unknown[0]!s}; {closest(unknown[0], fields)}known fields "
            f"here: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(value, hints[name], f"{where}.{name}" if where else name)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"missing required config field {prefix}{missing[0]}")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def added_field(default: Any = None, *, factory: Any = None) -> Any:
    """A config field added after run ids were first recorded: while it holds `default` (or `factory()`, for a
    list) it is left out of the content hash (`to_dict(..., for_hash=True)`), so configs written before it
    existed keep their ids (and their run folders, lr groups and cells). Another value hashes as usual."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"hash_omits_default": True})
    return dataclasses.field(default=default, metadata={"hash_omits_default": True})


def _hashed(f: dataclasses.Field, value: Any) -> bool:
    if not f.metadata.get("hash_omits_default"):
        return True
    default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
    return value != default


def to_dict(obj: Any, *, for_hash: bool = False) -> Any:
    """A dataclass (nested) as plain dicts/lists, ready for YAML or JSON. for_hash: as hashed, i.e. without
    the `added_field`s that hold their default."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: to_dict(getattr(obj, f.name), for_hash=for_hash)
            for f in dataclasses.fields(obj)
            if not for_hash or _hashed(f, getattr(obj, f.name))
        }
    if isinstance(obj, dict):
        return {k: to_dict(v, for_hash=for_hash) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v, for_hash=for_hash) for v in obj]
    return obj


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply dotted `a.b.c=value` overrides to a raw config dict (list items by index: `stages.1.lr.peak=1e-3`)."""
    data = json.loads(json.dumps(data))  # deep copy of plain data (load_yaml and parse_value return only that)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE; write it like optim.lr=3e-4")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override key {key!r} is malformed; write it like optim.lr=3e-4")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            node = _step(node, part, ".".join(parts[: i + 1]), create=True)
        last = parts[-1]
        if isinstance(node, list):
            idx = _index(node, last, key)
            node[idx] = parse_value(raw)
        elif isinstance(node, dict):
            node[last] = parse_value(raw)
        else:
            raise ConfigError(f"override {key!r}: {'.'.join(parts[:-1])} is a value, not a section")
    return data


def add_override_arguments(p: argparse.ArgumentParser, example: str = "optim.lr=3e-4") -> None:
    """Dotted overrides on a command line, the same for every command: bare `KEY=VALUE` arguments and
    `--set KEY=VALUE` (repeatable), mixed freely. After parsing, `args.overrides` holds them all in
    command-line order (a key given twice: the last one wins), ready for `apply_overrides`. Call it
    after the command's other positional arguments."""
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help=f"dotted config overrides, applied in order, e.g. {example} (same as --set KEY=VALUE)",
    )
    p.add_argument(
        "--set",
        dest="set_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dotted config override (repeatable), same as a bare KEY=VALUE",
    )
    # argparse stops filling positionals at the first option, so `CONFIG --out DIR KEY=VALUE` would leave
    # KEY=VALUE unrecognized: collect such leftovers into the overrides too.
    parse_known = p.parse_known_args

    def parse_known_with_overrides(args=None, namespace=None):
        argv = list(sys.argv[1:] if args is None else args)
        ns, rest = parse_known(argv, namespace)
        extra = [a for a in rest if "=" in a and not a.startswith("-")]
        ns.overrides = _in_argv_order(argv, [*(ns.overrides or []), *extra, *ns.set_overrides])
        del ns.set_overrides
        return ns, [a for a in rest if a not in extra]

    p.parse_known_args = parse_known_with_overrides


def _in_argv_order(argv: list[str], items: list[str]) -> list[str]:
    """`items` (strings found in `argv`, bare or as `--opt=ITEM`) sorted by where they occur in `argv`."""
    left, out = list(items), []
    for token in argv:
        for candidate in (token, token.partition("=")[2] if token.startswith("--") else None):
            if candidate in left:
                left.remove(candidate)
                out.append(candidate)
                break
    return out + left


def _index(node: list, part: str, key: str) -> int:
    try:
        idx = int(part)
    except ValueError:
        raise ConfigError(f"override {key!r}: {part!r} must be a list index (0..{len(node) - 1})") from None
    if not -len(node) <= idx < len(node):
        raise ConfigError(f"override {key!r}: index {idx} is out of range (0..{len(node) - 1})")
    return idx


def _step(node: Any, part: str, key: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, key)]
    if isinstance(node, dict):
        if part not in node or node[part] is None:
            if not create:
                raise ConfigError(f"no config section {key!r}")
            node[part] = {}
        return node[part]
    raise ConfigError(f"override {key!r}: its parent is a value, not a section")


def load_config(cls: type[T], path: str | Path, overrides: list[str] | None = None) -> T:
    return from_dict(cls, apply_overrides(load_yaml(path), overrides or []))


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=None)


def config_hash(obj: Any, length: int = 16) -> str:
    """Content hash of a config. Key order counts: the order of data.domains sets the sampler's
    tie-breaks and seeds, so two configs that list domains differently are different runs. `added_field`s
    at their default are left out (see there)."""
    blob = json.dumps(to_dict(obj, for_hash=True), separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]

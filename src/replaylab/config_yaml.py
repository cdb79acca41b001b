"""Reading YAML for every config replaylab reads (run configs, experiments, fine-tuning configs, override
values): a mapping at the top, plain data only (numbers, strings, booleans, null, lists, mappings), each key
once, dates kept as strings, bounded in size (aliases cannot expand a few lines into billions of values), and
`parse_number`, the one reader of numbers. Every way the text can be unfit is a ConfigError naming where.
replaylab.config builds typed configs from what this reads.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from replaylab.errors import ConfigError


class _DuplicateKey(yaml.constructor.ConstructorError):
    def __init__(self, key: Any, first: yaml.Mark, again: yaml.Mark):
        lines = f"line {again.line + 1}" if first.line == again.line else f"lines {first.line + 1} and {again.line + 1}"
        super().__init__(problem=f"key {key!r} is given twice ({lines}); keep one", problem_mark=again)
        self.key = key


class ConfigLoader(yaml.SafeLoader):
    """The YAML loader for everything replaylab reads (configs, experiments, override values): a key
    given twice in one mapping is an error (PyYAML would silently keep the last one), and dates stay
    strings (no config field is a date, and a date object would not survive the JSON copy of overrides)."""


def _construct_mapping(loader: ConfigLoader, node: yaml.MappingNode):
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: keys written after it override, by design
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node)
        except TypeError:  # an unhashable key: construct_yaml_map reports it
            continue
        if first is not key_node:
            raise _DuplicateKey(key, first.start_mark, key_node.start_mark)
    yield from loader.construct_yaml_map(node)


ConfigLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
ConfigLoader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)

_PLAIN = (str, int, float, bool, type(None))


# What one config (a run, an experiment, a fine-tuning run, an override value) may expand to, counted in
# values (every number, string, list item and mapping entry, with each alias counted as often as it is
# used): the largest shipped experiment holds a few hundred. YAML aliases repeat what they refer to, so a
# few lines of nested aliases ("billion laughs") expand to billions of values, which every later step
# (overrides, validation, config.yaml, the manifest) would copy out in full.
MAX_CONFIG_VALUES = 100_000


def _check_plain(value: Any, what: str) -> None:
    """Raise ConfigError unless `value` is plain data: numbers, strings, booleans, null, lists, mappings
    (no !!binary, !!set or !!omap, and no alias that contains itself) of at most MAX_CONFIG_VALUES values.
    Linear in the YAML's own size: a shared (aliased) value is checked once and counted as often as used."""
    try:
        _plain_size(value, what, "", {}, set())
    except RecursionError:
        raise ConfigError(f"{what} nests too deeply to read; flatten it") from None


def _plain_size(value: Any, what: str, key: str, sizes: dict[int, int], open_: set[int]) -> int:
    """Values `value` expands to (see MAX_CONFIG_VALUES); `sizes` caches shared values, `open_` holds the
    containers being walked (one seen again inside itself is an alias cycle)."""
    if isinstance(value, _PLAIN):
        return 1
    where = f"{what} at {key}" if key else what
    if id(value) in sizes:
        return sizes[id(value)]
    if id(value) in open_:
        raise ConfigError(f"{where}: an alias refers to a value that contains it; write the value out instead")
    if isinstance(value, dict):
        items = list(value.items())
        for k, _ in items:
            if not isinstance(k, _PLAIN):
                raise ConfigError(f"{where}: key {k!r} is not a plain string or number; write it as a string")
        children = [(f"{key}.{k}" if key else str(k), v) for k, v in items]
    elif isinstance(value, list):
        children = [(f"{key}[{i}]", v) for i, v in enumerate(value)]
    else:
        raise ConfigError(
            f"{where}: {value!r} ({type(value).__name__}) is not plain YAML data; write a number, "
            "string, list or mapping"
        )
    open_.add(id(value))
    total = 1
    for child_key, child in children:
        total += _plain_size(child, what, child_key, sizes, open_)
        if total > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"{what} expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases repeat what "
                "they refer to); a config is far smaller: write it without nested aliases"
            )
    open_.discard(id(value))
    sizes[id(value)] = total
    return total


def parse_number(value: Any, where: str) -> float:
    """The one reader of numbers in configs and experiments: a YAML int/float, a numeric string
    ("3e-4": YAML 1.1 reads it as a string) or a fraction "a/b" ("1/256"). The result must be
    finite: nan, inf, a zero denominator or anything else raise ConfigError naming `where` and the value."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    num, slash, den = value.partition("/") if isinstance(value, str) else (value, "", None)
    try:
        parts = [float(num), float(den)] if slash else [float(num)]
    except ValueError:
        raise ConfigError(f"{where}: expected a number (like 3e-4 or 1/256), got {value!r}") from None
    except OverflowError:  # an int beyond the float range
        parts = [math.inf]
    if len(parts) == 2 and parts[1] == 0:
        raise ConfigError(f"{where}: {value!r} divides by zero; give a nonzero denominator, e.g. 1/256")
    number = parts[0] / parts[1] if len(parts) == 2 else parts[0]  # 1e308/1e-308 overflows to inf
    if not all(math.isfinite(x) for x in (*parts, number)):
        raise ConfigError(
            f"{where}: {value!r} is not a finite number; nan and inf are not allowed, give a value such as 3e-4"
        )
    return number


def parse_value(text: str) -> Any:
    """An override value as YAML would read it (`3e-4`, `true`, `[1, 2]`, `{a: 1}`); text YAML cannot
    read stays a string. A key given twice (`{a: 1, a: 2}`) is an error."""
    try:
        value = yaml.load(text, Loader=ConfigLoader)
    except _DuplicateKey as e:
        raise ConfigError(f"override value {text!r}: key {e.key!r} is given twice; keep one") from None
    except (yaml.YAMLError, RecursionError):
        return text
    _check_plain(value, f"override value {text!r}")
    if isinstance(value, str) and "/" not in value and any(c in value for c in ".eE"):
        try:  # "3e-4": a string to YAML 1.1; fractions are left to the field's type
            return parse_number(value, "override")
        except ConfigError:
            return value
    return value


def load_yaml(path: str | Path) -> dict:
    """The mapping at the top of a YAML file; every way the file can be unreadable is a ConfigError."""
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise ConfigError(f"config file {name!r} does not exist; check the path")
    if path.is_dir():
        raise ConfigError(f"config file {name!r} is a folder; give the path of a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"config file {name!r} is not UTF-8 text (byte {e.object[e.start]:#04x} at line {line}); save it as UTF-8"
        ) from None
    except OSError as e:
        raise ConfigError(
            f"config file {name!r} cannot be read ({e.strerror or e}); check the path and its permissions"
        ) from None
    try:
        data = yaml.load(text, Loader=ConfigLoader)
    except _DuplicateKey as e:
        raise ConfigError(f"config file {name!r}: {e.problem}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or e
        raise ConfigError(f"config file {name!r} is not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"config file {name!r} nests too deeply for YAML to read; flatten it") from None
    _check_plain(data, f"config file {name!r}")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of fields at the top level")
    return data

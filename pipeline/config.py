"""Typed configuration: YAML files + dotted `key=value` overrides -> validated dataclasses.

Every knob a user can set is a field of a dataclass (one comment per field, in the dataclass that
owns it). `load_config(cls, path, overrides)` merges the YAML file and the overrides once,
rejects unknown keys and ill-typed values with a `ConfigError` that names the dotted key, runs each
dataclass's own `validate()` for range checks, and returns the instance. `save_config` writes the
resolved config (plus the git revision and a hash) next to an output, so every run can be redone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import types
import typing
from pathlib import Path
from typing import Any, Literal, NewType, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")

# A setting that names a file or directory: `~` and environment variables are expanded when the
# config is loaded (the shell does not expand `~` after `key=`, e.g. `data.shards=~/shards`).
PathStr = NewType("PathStr", str)


class ConfigError(ValueError):
    """A bad config: the message names the dotted key and the reason."""


class UserInputError(ValueError):
    """A bad input the user named (a labels file, a model directory, a shards directory): the
    message says which file and what is wrong; the command line prints it as one line."""


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["video.fps=30", "asr.model_path=null"]` -> nested dict; values parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"{key}: cannot parse value {raw!r}: {e}") from None
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {part!r} is set both as a value and as a section")
        node[parts[-1]] = value
    return nested


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `update` wins."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one value against a type hint; raise ConfigError naming `key`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if tp is PathStr:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a path, got {value!r}")
        return os.path.expandvars(os.path.expanduser(value)) if value else value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {tp}"
        )
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [value]  # `data.train=file.json` means a list of one
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a section (mapping), got {value!r}")
        return _build(tp, value, key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads `1e-3` as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # e.g. model names such as `tiny` vs `1`
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported config type {tp}")


def _build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    hints = get_type_hints(cls)
    # A section whose type depends on another value (the settings of the model named by
    # `model.name`): the dataclass says which type, and a missing section gets its defaults.
    resolve = getattr(cls, "section_types", None)
    if callable(resolve):
        dynamic = resolve(data, prefix)
        hints.update(dynamic)
        data = {**{name: {} for name in dynamic}, **data}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    # A missing section that resolves types of its own is built too, so its hook runs.
    for name in fields:
        if name not in data and hasattr(hints.get(name), "section_types"):
            data = {**data, name: {}}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]!s} (valid keys in {prefix or 'the top level'}: "
            f"{', '.join(sorted(fields))})"
        )
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith(prefix) else prefix + msg) from None
    return obj


def load_config_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build and validate `cls` from a nested dict (e.g. settings stored in a model's config)."""
    return _build(cls, data, prefix)


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None
) -> T:
    """Merge YAML file and overrides into `cls`; raise ConfigError naming the bad key."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data.pop("_meta", None)  # provenance block written by save_config
    data = deep_merge(data, parse_overrides(overrides or []))
    return _build(cls, data)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass -> plain dict (tuples become lists so YAML/JSON round-trip)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def flat_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and other values stay as they are."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_hash(cfg: Any, sections: typing.Iterable[str] | None = None) -> str:
    """sha256 (first 16 hex) of the canonical JSON of the config, or of some of its sections."""
    d = to_dict(cfg)
    if sections is not None:
        d = {k: d[k] for k in sections}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def git_revision() -> str:
    """Git revision of the vlpipe checkout (with '+dirty'), or 'unknown' outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_config(cfg: Any, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write the resolved config as YAML (atomically), with a `_meta` block of provenance."""
    from pipeline.io import atomic_write_text

    d = to_dict(cfg)
    d["_meta"] = {"git_revision": git_revision(), "config_hash": config_hash(cfg), **(extra or {})}
    atomic_write_text(Path(path), yaml.safe_dump(d, sort_keys=False))


def require_path(key: str, value: str | None, what: str) -> Path:
    """`value` as a Path that exists; ConfigError naming the key and the path otherwise."""
    if not value:
        raise ConfigError(f"{key}: {what} is required ({key}=PATH)")
    path = Path(value)
    if not path.exists():
        raise ConfigError(f"{key}: {path} does not exist ({what})")
    return path


def check_range(key: str, value: float, lo: float | None = None, hi: float | None = None) -> None:
    """Raise ConfigError unless lo < value (strict) and value <= hi."""
    if lo is not None and not value > lo:
        raise ConfigError(f"{key}: must be > {lo}, got {value}")
    if hi is not None and not value <= hi:
        raise ConfigError(f"{key}: must be <= {hi}, got {value}")

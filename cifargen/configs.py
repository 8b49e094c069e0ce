"""Configuration dataclasses to and from plain values: saved JSON, TOML files and ``key=value`` settings.

* :func:`config_from_dict` reads a configuration back from what ``dataclasses.asdict`` wrote
  (model files, run checkpoints, ``metrics.json``), nested configurations included;
* :func:`read_config_file` reads the settings of a ``--config`` file: a run's ``config.json`` or
  ``metrics.json``, a plain JSON object, or a TOML file;
* :func:`with_settings` applies ``{"arch.width": 64, ...}`` to a configuration, checking every
  name against the dataclass fields and every value against the field's type, so each field is
  reachable from the command line without a hand-kept list of names.

The dataclasses themselves validate their values (``__post_init__`` or ``validate``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

T = TypeVar("T")

# Settings of a saved run that say where and how it ran, not what it trains: a --config file
# does not carry them into a new run.
PLACE_SETTINGS = ("out", "resume", "overwrite", "tensorboard")


def config_from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """``cls`` built from ``values`` as saved by ``dataclasses.asdict``.

    Fields the file does not mention take the value ``cls.VALUES_BEFORE_FIELD`` gives them (what
    runs did before the field existed, where its default has changed since), else their defaults;
    nested configurations are rebuilt; JSON lists become tuples. Keys that name no field raise
    ``ConfigError``: they come from another cifargen version (most likely a newer one), and
    ignoring them would change the model.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"a saved {cls.__name__} must be a JSON object of settings, got {type(values).__name__}")
    fields = dataclasses.fields(cls)
    unknown = sorted(set(values) - {f.name for f in fields})
    if unknown:
        raise ConfigError(f"the saved {cls.__name__} has settings this version of cifargen does not know "
                          f"({', '.join(unknown)}); it was written by another cifargen version, most likely "
                          "a newer one: upgrade cifargen to read it")
    kwargs = values_before_fields(cls, values)
    for f in fields:
        if f.name not in values:
            continue
        value = values[f.name]
        nested = nested_config_class(f)
        if nested is not None and isinstance(value, dict):
            value = config_from_dict(nested, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"the saved {cls.__name__} is incomplete ({exc})") from None


def values_before_fields(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The settings a saved ``cls`` leaves out because it is older than them, with the values runs
    had before each setting existed (``cls.VALUES_BEFORE_FIELD``)."""
    before = getattr(cls, "VALUES_BEFORE_FIELD", {})
    return {name: value for name, value in before.items() if name not in values}


def read_config_file(path: str | os.PathLike, cls: type | None = None) -> dict[str, Any]:
    """The training settings in ``path``: a run's ``config.json`` (its ``training`` part), a run's
    ``metrics.json`` (its ``config`` part), any other JSON object, or a TOML file.

    A run's file older than some settings of ``cls`` gets the values those settings had then, so
    that it configures the run it describes; other files leave unmentioned settings to the caller.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read --config {path} ({exc.strerror or exc}); check the path") from None
    try:
        if path.suffix.lower() == ".toml":
            values = tomllib.loads(text)
        else:
            values = json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise ConfigError(f"--config {path} is not valid {kind} ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path} must hold an object of settings, got {type(values).__name__}")
    if isinstance(values.get("training"), dict) and "arch" in values:  # a model file's config.json
        values = values["training"]
    elif isinstance(values.get("config"), dict) and "history" in values:  # a run's metrics.json
        values = values["config"]
    else:  # a hand-written file: what it leaves out stays the caller's
        cls = None
    if cls is not None:
        values = with_values_before_fields(cls, without_unrecorded(cls, values))
    return {k: v for k, v in values.items() if k not in PLACE_SETTINGS}


def with_values_before_fields(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with :func:`values_before_fields` filled in, in nested configurations (``arch``) too."""
    values = {**values_before_fields(cls, values), **values}
    for f in dataclasses.fields(cls):
        nested = nested_config_class(f)
        if nested is not None and isinstance(values.get(f.name), dict):
            values[f.name] = with_values_before_fields(nested, values[f.name])
    return values


def nested_config_class(f: dataclasses.Field) -> type | None:
    """The configuration class a field holds (``arch``: the model's architecture), or None."""
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
    return type(default) if dataclasses.is_dataclass(default) else None


def without_unrecorded(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """A run file's settings less the nulls of settings that cannot be None.

    A shared run file has its machine's paths (``data_dir``) blanked to null; such a null says
    "not recorded", so the caller's value (the default, or a flag) stays.
    """
    hints = typing.get_type_hints(cls)
    return {k: v for k, v in values.items() if v is not None or k not in hints or accepts_none(hints[k])}


def accepts_none(hint: Any) -> bool:
    """Whether a field of type ``hint`` may hold None (``X | None``, ``Optional[X]``, ``Any``)."""
    return hint is Any or type(None) in typing.get_args(hint)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"arch": {"width": 64}}`` -> ``{"arch.width": 64}``."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def parse_setting(text: str) -> tuple[str, str]:
    """``"arch.width=64"`` -> ``("arch.width", "64")``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, for example --set arch.width=64")
    return key.strip(), value.strip()


def with_settings(config: T, settings: dict[str, Any], source: str = "--set") -> T:
    """A copy of ``config`` with the dotted ``settings`` applied (values may be text, as typed)."""
    values = dataclasses.asdict(config)
    for key, value in settings.items():
        holder, cls, names = values, type(config), key.split(".")
        for depth, name in enumerate(names):
            field = {f.name: f for f in dataclasses.fields(cls)}.get(name)
            if field is None:
                known = ", ".join(sorted(f.name for f in dataclasses.fields(cls)))
                where = ".".join(names[:depth]) or "the configuration"
                raise ConfigError(f"{source} {key}: {where} has no setting {name!r} (known: {known})")
            hint = typing.get_type_hints(cls)[name]
            if depth < len(names) - 1:
                if not (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
                    raise ConfigError(f"{source} {key}: {'.'.join(names[:depth + 1])} is not a group of settings")
                holder, cls = holder[name], hint
            else:
                if isinstance(hint, type) and dataclasses.is_dataclass(hint):
                    raise ConfigError(f"{source} {key}: {key} is a group of settings; set one of its fields, "
                                      f"for example {key}.{dataclasses.fields(hint)[0].name}=...")
                holder[name] = coerce(value, hint, f"{source} {key}")
    updated = config_from_dict(type(config), values)
    if hasattr(updated, "validate"):
        updated.validate()
    return updated


def coerce(value: Any, hint: Any, what: str) -> Any:
    """``value`` (text from the command line, or a parsed JSON/TOML value) as type ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(value, option, what)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{what}: cannot be {value!r}")
    if origin is tuple:
        items = value
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    items = json.loads(text)
                except ValueError:
                    raise ConfigError(f"{what}: expected a list like [0.5, 0.75], got {value!r}") from None
            else:
                items = [part for part in text.replace(",", " ").split()]
        if not isinstance(items, (list, tuple)):
            items = [items]
        item_type = args[0] if args else str
        if len(args) == 2 and args[1] is Ellipsis or len(args) <= 1:
            return tuple(coerce(v, item_type, what) for v in items)
        if len(items) != len(args):
            raise ConfigError(f"{what}: expected {len(args)} values, got {len(items)}")
        return tuple(coerce(v, t, what) for v, t in zip(items, args))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{what}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{what}: expected a whole number, got {value!r}")
        try:
            number = float(value) if isinstance(value, str) and not value.strip().lstrip("-").isdigit() else value
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            return int(number)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{what}: expected a whole number, got {value!r}") from None
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{what}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{what}: expected a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{what}: expected text, got {value!r}")
        return value
    return value

"""Configuration dataclasses read back from saved JSON: model files and run checkpoints.

One reader for both, so that a file written by an older cifargen means the same thing wherever it
is read: a dataclass with an ``upgrade_saved(values)`` class method first translates settings
that were renamed; a field the file does not mention takes the value recorded in the dataclass's
``VALUES_BEFORE_FIELD`` (what files written before the field existed describe) or else the
field's default; nested configurations are read recursively; JSON lists become tuples.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def config_from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """``cls`` built from ``values`` as saved by ``dataclasses.asdict`` (possibly by an older version).

    Keys that name no field of ``cls`` raise ``ConfigError``: they come from another cifargen
    version (most likely a newer one), and building the model without them would silently change it.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"a saved {cls.__name__} must be a JSON object of settings, got {type(values).__name__}")
    if hasattr(cls, "upgrade_saved"):
        values = cls.upgrade_saved(values)
    fields = dataclasses.fields(cls)
    unknown = sorted(set(values) - {f.name for f in fields})
    if unknown:
        raise ConfigError(f"the saved {cls.__name__} has settings this version of cifargen does not know "
                          f"({', '.join(unknown)}); it was written by another cifargen version, most likely "
                          "a newer one: upgrade cifargen to read it")
    before = getattr(cls, "VALUES_BEFORE_FIELD", {})
    kwargs = {}
    for f in fields:
        if f.name not in values:
            if f.name in before:
                kwargs[f.name] = before[f.name]
            continue
        value = values[f.name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = config_from_dict(type(default), value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)

"""Dataclass configs from plain mappings (YAML): unknown keys and wrong types fail at load time.

One builder serves the training config and the degradation configs. Values are converted to the
field's annotated type where that is safe: YAML reads ``5e-5`` or ``8e-1`` (no dot) as a string, so
numeric strings are accepted for float fields; anything else of the wrong type is a
:class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from .errors import OSEDiffError

T = TypeVar("T")


_EXACT_KINDS = {bool: "true or false", int: "an integer", str: "a string"}


class ConfigError(OSEDiffError, ValueError):
    """A configuration that cannot be used; the message names the key."""


def build(target: type[T] | T, raw: Any, where: str = "") -> T:
    """``target`` (a dataclass, or an instance whose values are the defaults) updated from ``raw``.

    With an instance, a nested mapping updates that instance's own nested config, so a partial
    sub-mapping keeps the other values of *that* sub-config (e.g. stage 2's own degradation defaults).
    """
    cls = target if isinstance(target, type) else type(target)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise unknown_key(key, path, names)
        current = None if isinstance(target, type) else getattr(target, key)
        if dataclasses.is_dataclass(current):
            kwargs[key] = build(current, value, path)
        else:
            kwargs[key] = coerce(hints[key], value, path)
    if isinstance(target, type):
        try:
            return cls(**kwargs)
        except TypeError:  # a required field is missing
            missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs
                       and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
            raise ConfigError(f"{where or 'config'}: missing key(s) {', '.join(missing)}") from None
    return dataclasses.replace(target, **kwargs)


def unknown_key(key: Any, path: str, known: list[str]) -> ConfigError:
    """The error for ``key`` (at ``path``) not in ``known``: the closest known key (a typo) or all of them."""
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(known)}"
    return ConfigError(f"unknown key {path!r}{hint}")


def coerce(hint: Any, value: Any, path: str) -> Any:
    """``value`` as the type ``hint`` (dataclass, Optional, Literal, list, tuple, dict, bool, int, float, str)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(inner[0], value, path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        return [coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        variable = len(args) == 2 and args[1] is Ellipsis
        if not isinstance(value, list | tuple) or (not variable and len(value) != len(args)):
            size = "" if variable else f" of {len(args)}"
            kind = "numbers" if args[0] in (int, float) else "values"
            raise ConfigError(f"{path}: expected a list{size} {kind}, got {value!r}")
        kinds = [args[0]] * len(value) if variable else list(args)
        return tuple(coerce(k, v, f"{path}[{i}]") for i, (k, v) in enumerate(zip(kinds, value, strict=True)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if hint in _EXACT_KINDS:
        # bool is an int to Python, but `true` where a count is expected is a mistake
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{path}: expected {_EXACT_KINDS[hint]}, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{path}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    return value

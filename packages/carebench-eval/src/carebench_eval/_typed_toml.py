"""Typed configuration values: every TOML value is checked against the type its dataclass field declares.

TOML holds strings, integers, floats, booleans, arrays and tables; a frozen config dataclass says which
of them each field takes. `load_dataclass` checks every value of a table against its field's type
hint: a boolean is not a string, a string is not a boolean, a float is not an integer (an integer is
accepted where a float is expected, as in Python), a `Literal` field takes one of its choices. Arrays
become tuples, strings become `Path`s where the field says so, nested tables become nested
dataclasses, and a key the dataclass does not have is an error. `check_value` checks one value (a
function's keyword argument, a table of overrides). Every error is a `ConfigValueError`, one line that
names the key, the expected type and the value, e.g.::

    cohort.single_careunit must be a boolean (true or false), got "false" (a string)

This file exists twice, byte for byte: `carebench_data.typed_toml` (also used by carebench-cli) and
`carebench_eval._typed_toml`, because carebench-data and carebench-eval each install alone and never
import each other. A test keeps the two copies identical.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any, get_args, get_origin, get_type_hints

__all__ = ["ConfigValueError", "check_table", "check_value", "describe", "load_dataclass"]

_SEQUENCES = (list, tuple, collections.abc.Sequence)
_MAPPINGS = (dict, collections.abc.Mapping)
_UNIONS = (typing.Union, types.UnionType)
_SHOWN_CHARACTERS = 60


class ConfigValueError(ValueError):
    """A configuration value has the wrong type, or a table has a key its dataclass lacks.

    Attributes:
        key: the dotted key at fault (`cohort.single_careunit`, `train.max_epochs`).
    """

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


def _shown(value: Any) -> str:
    """The value as it is written in TOML: strings double-quoted, booleans lower-case."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, Mapping):
        text = "{" + ", ".join(f"{key} = {_shown(item)}" for key, item in value.items()) + "}"
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(_shown(item) for item in value) + "]"
    else:
        text = repr(value)
    return text if len(text) <= _SHOWN_CHARACTERS else text[: _SHOWN_CHARACTERS - 3] + "..."


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    return f"a {type(value).__name__}"


def describe(annotation: Any) -> str:
    """What a field of this type takes, in words: `a boolean (true or false)`, `an array of integers`."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is Any:
        return "any value"
    if origin is typing.Literal:
        return "one of " + ", ".join(_shown(choice) for choice in args)
    if origin in _UNIONS:
        return " or ".join(dict.fromkeys(describe(arm) for arm in args if arm is not type(None)))
    if annotation is bool:
        return "a boolean (true or false)"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is str:
        return "a string"
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return "a path (a string)"
    if dataclasses.is_dataclass(annotation) or annotation in _MAPPINGS or origin in _MAPPINGS:
        return "a table"
    if origin in _SEQUENCES or annotation in _SEQUENCES:
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"an array of {len(args)} items ({', '.join(describe(arm) for arm in args)})"
        return f"an array (each item {describe(args[0])})" if args else "an array"
    return f"a {getattr(annotation, '__name__', str(annotation))} (not expressible in TOML)"


def _wrong(value: Any, annotation: Any, key: str) -> ConfigValueError:
    return ConfigValueError(
        f"{key} must be {describe(annotation)}, got {_shown(value)} ({_kind(value)})", key=key
    )


def _join(section: str, name: str) -> str:
    return f"{section}.{name}" if section else name


def check_value(value: Any, annotation: Any, *, key: str) -> Any:
    """Check `value` against a type hint and return it converted (arrays to tuples, strings to paths).

    Args:
        value: a value read from TOML (or given in code).
        annotation: the resolved type hint (`typing.get_type_hints`), e.g. `bool`, `tuple[str, ...]`,
            `Literal["icu", "hospital"]`, `Path | None`, a dataclass.
        key: the dotted key, for the message.

    Returns:
        The value, with arrays as tuples (lists for `list[...]` fields), path strings as `Path`,
        integers as floats for `float` fields and tables as dataclass instances.

    Raises:
        ConfigValueError: the value does not have the type (one line naming key, type and value).
    """
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is Any:
        return value
    if origin is typing.Literal:
        if any(type(value) is type(choice) and value == choice for choice in args):
            return value
        raise _wrong(value, annotation, key)
    if origin in _UNIONS:
        if value is None and type(None) in args:
            return None
        arms = [arm for arm in args if arm is not type(None)]
        if len(arms) == 1:  # Optional[X]: X's own, more precise message
            return check_value(value, arms[0], key=key)
        for arm in arms:
            try:
                return check_value(value, arm, key=key)
            except ConfigValueError:
                continue
        raise _wrong(value, annotation, key)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif isinstance(annotation, type) and issubclass(annotation, PurePath):
        if isinstance(value, str | PurePath):
            return Path(value)
    elif dataclasses.is_dataclass(annotation):
        if isinstance(value, Mapping):
            return load_dataclass(annotation, value, section=key)  # type: ignore[arg-type]
        if isinstance(value, annotation):  # type: ignore[arg-type]
            return value
    elif origin in _MAPPINGS or annotation in _MAPPINGS:
        if isinstance(value, Mapping):
            key_type, item_type = args if args else (Any, Any)
            return {
                check_value(name, key_type, key=_join(key, str(name))): check_value(
                    item, item_type, key=_join(key, str(name))
                )
                for name, item in value.items()
            }
    elif origin in _SEQUENCES or annotation in _SEQUENCES:
        if isinstance(value, list | tuple):
            if origin is tuple and args and args[-1] is not Ellipsis:
                if len(args) != len(value):
                    raise _wrong(value, annotation, key)
                return tuple(
                    check_value(item, arm, key=f"{key}[{index}]")
                    for index, (item, arm) in enumerate(zip(value, args, strict=True))
                )
            item_type = args[0] if args else Any
            items = [check_value(item, item_type, key=f"{key}[{index}]") for index, item in enumerate(value)]
            return items if (origin or annotation) is list else tuple(items)
    elif origin is collections.abc.Callable:
        if callable(value):
            return value
    elif isinstance(annotation, type) and isinstance(value, annotation):
        return value
    raise _wrong(value, annotation, key)


def check_table(cls: type, data: Mapping[str, Any], *, section: str = "") -> dict[str, Any]:
    """Check a table against the fields of dataclass `cls` without building it (e.g. overrides).

    Args:
        cls: a dataclass whose fields carry type hints.
        data: the table; it may leave out any field.
        section: dotted name of the table, for messages (`""` = top level).

    Returns:
        The checked and converted values (`check_value`), by field name.

    Raises:
        ConfigValueError: a key that `cls` does not have, or a value of the wrong type.
    """
    if not isinstance(data, Mapping):
        raise _wrong(data, cls, section or cls.__name__)
    fields = [field.name for field in dataclasses.fields(cls) if field.init]
    unknown = [name for name in data if name not in fields]
    if unknown:
        where = f" in [{section}]" if section else ""
        raise ConfigValueError(
            f"unknown key(s) {', '.join(repr(_join(section, name)) for name in unknown)}{where}; "
            f"valid keys: {', '.join(sorted(fields))}",
            key=_join(section, unknown[0]),
        )
    hints = get_type_hints(cls)
    return {name: check_value(value, hints[name], key=_join(section, name)) for name, value in data.items()}


def load_dataclass(cls: type, data: Mapping[str, Any], *, section: str = "") -> Any:
    """Build dataclass `cls` from a table, checking every key and value against the fields.

    Args:
        cls: a dataclass whose fields carry type hints (nested dataclass fields take nested tables).
        data: the table (e.g. `tomllib.load` output); keys the table lacks keep their defaults.
        section: dotted name of the table, for messages (`""` = top level).

    Returns:
        `cls(**checked_values)`; its `__post_init__` may raise its own errors about the values.

    Raises:
        ConfigValueError: a key that `cls` does not have, or a value of the wrong type.
    """
    return cls(**check_table(cls, data, section=section))

"""The generic validator: a value from YAML checked against, and built into, a schema type.

``build_fields(cls, data, key)`` returns the constructor arguments of a schema dataclass with
defaults filled in, or raises ``Invalid`` naming the deepest key at fault and what is expected
there (e.g. ``inference.scales[1]: expected a number in (0, 1], got 'half'``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from ..storage.remote import SCHEME, GsUri

LOCAL_ONLY = "must be a local folder (it is where gs:// files are kept on this machine)"
Key = tuple[str, ...]  # e.g. ("inference", "scales", "[1]")


class Invalid(Exception):
    def __init__(self, key: Key, text: str) -> None:
        super().__init__(text)
        self.key, self.text = key, text


class Mismatch(Invalid):
    """The value at ``key`` is not what its type wants (an enclosing Union/Rule rewords it)."""


def dotted(key: Key) -> str:
    return "".join(k if k.startswith("[") else "." + k for k in key).lstrip(".")


def show(value: Any) -> str:
    """A value as the user wrote it in YAML (true, null, 'text'), shortened."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def expect(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return args[1].expect
    if origin is Literal:
        return "one of " + "|".join(args) if len(args) > 1 else args[0]
    if origin in (typing.Union, types.UnionType):
        return " or ".join(expect(a) for a in args if a is not type(None)) + " or null"
    if origin is tuple:
        return "a list" if args[-1] is Ellipsis else f"a list of {len(args)} numbers"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    names.update({Path: "a path", GsUri: "a gs://bucket/path URI"})
    return names.get(tp, "a mapping")


def build(tp: Any, value: Any, key: Key) -> Any:
    """``value`` checked against and converted to ``tp``; Invalid names the deepest key."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = Mismatch(key, f"expected {expect(tp)}, got {show(value)}")
    if origin is Annotated or origin in (typing.Union, types.UnionType):
        if origin is not Annotated and value is None:
            return None
        options = args[:1] if origin is Annotated else [a for a in args if a is not type(None)]
        for inner in options:  # the first option that takes the value wins
            try:
                out = build(inner, value, key)
            except Mismatch as exc:
                if exc.key != key:  # a deeper key is at fault: name it
                    raise
                continue
            if origin is Annotated and not args[1].check(out):
                raise bad
            return out
        raise bad
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return tp(**build_fields(tp, value, key))
    if origin is Literal and isinstance(value, str) and value in args:
        return value
    if origin is tuple and isinstance(value, list):
        kinds = (args[0],) * len(value) if args[-1] is Ellipsis else args
        if len(kinds) == len(value):
            return tuple(
                build(t, v, (*key, f"[{i}]"))
                for i, (t, v) in enumerate(zip(kinds, value, strict=True))
            )
    if origin is dict and isinstance(value, dict):
        for k in value:
            if isinstance(k, bool):  # YAML 1.1 reads a bare on/off/yes/no key as a boolean
                raise Invalid((*key, str(k)), "a name YAML reads as true/false (on, off, yes, "
                              "no, ...): write it in quotes, e.g. 'off':")  # fmt: skip
        return {
            build(args[0], k, (*key, str(k))): build(args[1], v, (*key, str(k)))
            for k, v in value.items()
        }
    if tp is GsUri and isinstance(value, str) and value.startswith(SCHEME):
        try:
            return GsUri.parse(value)
        except ValueError as exc:
            raise Invalid(key, f"expected a gs://bucket/path URI, got {value!r}: {exc}") from None
    if tp is Path and isinstance(value, str) and value:
        if value.startswith(SCHEME):
            raise Invalid(key, f"{LOCAL_ONLY}, got {value!r}")
        return Path(value).expanduser()
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise bad


def build_fields(cls: type, data: dict, key: Key) -> dict[str, Any]:
    """Constructor arguments for dataclass ``cls`` from mapping ``data``; defaults filled in."""
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls) if f.metadata.get("yaml", True)]
    for k in data:
        if k not in names:
            raise Invalid((*key, str(k)), f"unknown key, expected one of {', '.join(names)}")
    out = {}
    for f in dataclasses.fields(cls):
        tp, at = hints[f.name], (*key, f.name)
        if f.name in data:
            out[f.name] = build(tp, data[f.name], at)
        elif dataclasses.is_dataclass(tp):
            out[f.name] = build(tp, {}, at)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if f.metadata.get("yaml", True):
                raise Invalid(at, f"expected {expect(tp)}, got nothing (the key is required)")
    return out

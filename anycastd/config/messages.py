"""Pydantic's errors -> ``ConfigIssue``s in the user's terms: the key path as written in the
file (union tags dropped), what was expected, "did you mean". No raw pydantic text leaks."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, ValidationError

from anycastd.config.errors import (
    ConfigIssue,
    _describe,
    _fmt,
    _unknown_key,
)
from anycastd.config.schema import (
    _CHECK_MODELS,
    CHECK_TYPES,
    ServiceConfig,
    _CheckBase,
)


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _walk(root: type[BaseModel], loc: tuple[str | int, ...]) -> tuple[list[str | int], Any]:
    """Turn a pydantic error location into a config key path; also return the model that
    holds the last key (for "did you mean" suggestions). Union tags are dropped."""
    parts: list[str | int] = []
    current: Any = root
    model: Any = None
    for item in loc:
        current = _unwrap(current)
        if _is_union(current):
            options = [_unwrap(a) for a in typing.get_args(current) if a is not type(None)]
            if len(options) == 1:
                current = options[0]
            else:
                tagged = [
                    o
                    for o in options
                    if isinstance(o, type)
                    and issubclass(o, BaseModel)
                    and "type" in o.model_fields
                    and typing.get_args(o.model_fields["type"].annotation) == (item,)
                ]
                if tagged:  # a discriminated-union tag: not part of the user's key path
                    current = tagged[0]
                    continue
                current = None
        if isinstance(current, type) and issubclass(current, BaseModel):
            model = current
            parts.append(item)
            current = _field(current, str(item))
        elif typing.get_origin(current) in (tuple, list):
            parts.append(item)
            current = typing.get_args(current)[0]
        elif typing.get_origin(current) is dict:
            parts.append(item)
            current = typing.get_args(current)[1]
        else:
            parts.append(item)
            current = None
    return parts, model


def _field(model: type[BaseModel], name: str) -> Any:
    for field_name, info in model.model_fields.items():
        if name in (field_name, info.alias):
            return info.annotation
    return None


def _keys(model: Any) -> list[str]:
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return []
    return sorted(info.alias or name for name, info in model.model_fields.items())


def _map_errors(
    exc: ValidationError, root: type[BaseModel], prefix: list[str | int], file: str
) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    errors = exc.errors(include_url=False)
    item_locs = {tuple(e["loc"][:n]) for e in errors for n in range(len(e["loc"]))}
    for error in errors:
        if error["type"] == "too_short" and tuple(error["loc"]) in item_locs:
            continue  # pydantic counts only the valid items; the bad ones are reported already
        parts, model = _walk(root, tuple(error["loc"]))
        message = _message(error, model, parts)
        issue = ConfigIssue(file, _fmt([*prefix, *parts]), message)
        if issue not in issues:
            issues.append(issue)
    return issues


def _message(error: Any, model: Any, parts: list[str | int]) -> str:
    kind: str = error["type"]
    ctx: dict[str, Any] = error.get("ctx") or {}
    value = error.get("input")
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        valid = [k for k in _keys(model) if k != "name" or model is not ServiceConfig]
        key = str(parts[-1]) if parts else ""
        if isinstance(model, type) and issubclass(model, _CheckBase) and key not in valid:
            owners = [t for t, m in _CHECK_MODELS.items() if key in m.model_fields]
            if owners:
                this = typing.get_args(model.model_fields["type"].annotation)[0]
                return (
                    f'"{key}" is not an option of {this} checks '
                    f"(it is an option of: {', '.join(owners)})"
                )
        return _unknown_key(key, valid)
    if kind in ("string_type", "string_sub_type"):
        return f"expected a string, got {_describe(value)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number, got {_describe(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {_describe(value)}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {_describe(value)}"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", '"')
        return f"expected {expected}, got {_describe(value)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a table, got {_describe(value)}"
    if kind in ("list_type", "tuple_type"):
        return f"expected an array, got {_describe(value)}"
    if kind == "too_short":
        minimum = ctx.get("min_length")
        noun = "character" if isinstance(value, str) else "item"
        return f"must have at least {minimum} {noun}{'s' if minimum != 1 else ''}"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    bounds = {
        "greater_than_equal": (">=", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("<=", "le"),
        "less_than": ("<", "lt"),
    }
    if kind in bounds:
        op, name = bounds[kind]
        return f"must be {op} {ctx.get(name)}, got {_describe(value)}"
    if kind == "union_tag_invalid":
        return f"unknown check type {_describe(ctx.get('tag'))}; expected one of " + ", ".join(
            CHECK_TYPES
        )
    if kind == "union_tag_not_found":
        return 'required key "type" is missing; expected one of ' + ", ".join(CHECK_TYPES)
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return str(error["msg"])

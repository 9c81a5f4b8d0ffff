"""The scenario reference (docs/scenario-reference.md), generated from the pydantic schema so it
can never drift from what the loader accepts: every field with its type, default and description."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

HEADER = """# Scenario reference

Generated from the schema by `simkv reproduce` (also `simkv schema` prints it as JSON Schema);
do not edit by hand. A scenario is a YAML file; every field below is `dotted.path: value`
in it, and any of them can be overridden with `--set dotted.path=value`, varied in `variants:`
or swept (`sweep:` in a scenario, `grid:`/`zip:` in a sweep file). Units are in each description.
Fields whose value is one of several kinds (arrival processes, length distributions) list each
kind under its own heading, chosen by the tag field (`process:`, `dist:`, `policy:`).
"""


def scenario_reference() -> str:
    """Markdown: one section per model reachable from Scenario, in the order first reached."""
    from simkv.scenario import Scenario
    sections: list[str] = []
    seen: dict[type, str] = {}
    queue: list[tuple[type, str]] = [(Scenario, "")]
    while queue:
        model, path = queue.pop(0)
        if model in seen:
            continue
        seen[model] = path
        title = path or "scenario (top level)"
        lines = [f"## `{title}`" if path else f"## {title}", ""]
        doc = " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())
        if doc and "Create a new model" not in doc:
            lines += [doc, ""]
        lines += ["| field | type | default | description |", "|---|---|---|---|"]
        for name, info in model.model_fields.items():
            dotted = f"{path}.{name}" if path else name
            for sub, suffix in models_in(info.annotation):
                queue.append((sub, _section_path(dotted + suffix, sub)))
            default = "required" if info.is_required() else _default(info)
            lines.append(f"| `{name}` | {_type(info.annotation)} | {default} | {_cell(info.description or '')} |")
        sections.append("\n".join(lines) + "\n")
    return HEADER + "\n" + "\n".join(sections)


def _section_path(dotted: str, model: type) -> str:
    """`workload.arrival (process: poisson)` for a tagged union member, else the dotted path."""
    for tag in ("process", "dist", "policy"):
        field = model.model_fields.get(tag)
        if field is not None and typing.get_origin(field.annotation) is Literal:
            return f"{dotted} ({tag}: {typing.get_args(field.annotation)[0]})"
    return dotted


def models_in(annotation: Any, suffix: str = "") -> list[tuple[type, str]]:
    """Every pydantic model inside an annotation (Optional, Union, Annotated, list, dict) with
    its path suffix: `[]` for list items, `.NAME` for map values."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, suffix)]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (list, tuple):
        suffix += "[]"
    elif origin is dict:
        return [m for m in models_in(args[1], suffix + ".NAME")]
    return [m for arg in args for m in models_in(arg, suffix)]


def _type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is Literal:
        return " \\| ".join(f"`{a!r}`".replace("'", '"') for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type(a) for a in args if a is not type(None)) + (" (optional)" if type(None) in args else "")
    if origin in (list, tuple):
        return f"list of {_type(args[0])}" if args else "list"
    if origin is dict:
        return f"map of {_type(args[0])} to {_type(args[1])}" if args else "map"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"{annotation.__name__} (below)"
    return getattr(annotation, "__name__", str(annotation))


def _default(info) -> str:
    if info.default_factory is not None:
        value = info.default_factory()
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return "defaults below"
    if value is None:
        return "–"
    return f"`{value!r}`".replace("'", '"') if not isinstance(value, (dict, list)) or value else "empty"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")

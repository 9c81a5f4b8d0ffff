"""Reading scenario files: YAML → dotted overrides → pydantic validation, with every failure
turned into a `SimkvError` naming the file, the field and the fix (this is an I/O edge)."""

from __future__ import annotations

import copy
import difflib
import os
import typing
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from simkv.catalog import parse_catalog
from simkv.errors import SimkvError
from simkv.scenario import Scenario


def load_scenario(path: str | Path, overrides: Iterable[str] | dict[str, Any] = ()) -> Scenario:
    """Load and validate a scenario file, applying dotted overrides (`engine.block_size=32`).

    Raises:
        SimkvError: naming the file and field, for every kind of bad input.
    """
    path = Path(path)
    raw = read_yaml_mapping(path)
    _merge_catalog_files(raw, path)
    _resolve_trace_path(raw, path)
    raw = apply_overrides(raw, overrides, origin=str(path))
    scenario = validate_scenario(raw, origin=str(path))
    try:
        scenario.model_spec(), scenario.gpu_spec()
        for _, point in expand_sweep(scenario):
            for _ in expand_variants(point):
                pass
    except SimkvError as err:
        raise err.located(str(path)) from None
    return scenario


def read_yaml_mapping(path: Path) -> dict:
    """Parse a YAML file that must hold a mapping."""
    if not path.exists():
        raise SimkvError("file not found", file=str(path), fix="check the path (scenarios live in scenarios/)")
    if path.is_dir():
        raise SimkvError("is a folder, not a scenario file", file=str(path), fix="name a .yaml file inside it")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SimkvError(f"YAML syntax error at {where}: {problem}", file=str(path),
                         fix="check indentation, colons and quotes around that line") from None
    except UnicodeDecodeError:
        raise SimkvError("not a text file", file=str(path), fix="give a YAML scenario file") from None
    if data is None:
        raise SimkvError("the file is empty", file=str(path), fix="start from scenarios/quickstart.yaml")
    if not isinstance(data, dict):
        raise SimkvError(f"expected a mapping of fields, got {type(data).__name__}", file=str(path),
                         fix="a scenario is a YAML mapping: model:, hardware:, workload:, run:, ...")
    return data


def _merge_catalog_files(raw: dict, path: Path) -> None:
    for i, name in enumerate(raw.get("catalog_files") or []):
        cat_path = (path.parent / str(name))
        field = f"catalog_files[{i}]"
        if not cat_path.exists():
            raise SimkvError(f"catalog file '{name}' not found next to the scenario", file=str(path),
                             field=field, fix="paths are relative to the scenario file")
        models, gpus = read_catalog(cat_path)
        raw.setdefault("models", {}).update(models)
        raw.setdefault("gpus", {}).update(gpus)
    for entry in (raw.get("gpus") or {}).values():   # inline entries: relative to the scenario
        if isinstance(entry, dict):
            _resolved_calibration(entry, path)
    gpu = (raw.get("hardware") or {}).get("gpu") if isinstance(raw.get("hardware"), dict) else None
    if isinstance(gpu, dict):
        _resolved_calibration(gpu, path)


def read_catalog(path: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    """(models, gpus) of a catalog file as validated plain entries, GPU calibration folders made
    absolute (they are written relative to the file)."""
    try:
        models, gpus = parse_catalog(read_yaml_mapping(path), str(path))
    except ValueError as err:
        raise SimkvError(str(err), file=str(path), fix="see `simkv schema` for the model and GPU fields") from None
    return ({k: v.model_dump() for k, v in models.items()},
            {k: _resolved_calibration(v.model_dump(), path) for k, v in gpus.items()})


def _resolved_calibration(entry: dict, origin: Path) -> dict:
    """A GPU entry's `calibration:` folder made absolute (it is written relative to its file)."""
    folder = entry.get("calibration")
    if isinstance(folder, str) and not Path(folder).is_absolute():
        entry["calibration"] = str((origin.parent / folder).resolve())
    return entry


def _resolve_trace_path(raw: dict, path: Path) -> None:
    """A trace file is named relative to the scenario; keep it findable from anywhere."""
    trace = (raw.get("workload") or {}).get("trace") if isinstance(raw.get("workload"), dict) else None
    if isinstance(trace, dict) and isinstance(trace.get("path"), str):
        # lexically absolute: resolve() would raise on a symlink loop (read_trace reports it)
        trace["path"] = os.path.abspath(path.parent / trace["path"])


def parse_override(text: str) -> tuple[str, Any]:
    """`engine.block_size=32` → ('engine.block_size', 32); values are parsed as YAML scalars."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SimkvError(f"override '{text}' is not of the form field.path=value", field="--set",
                         fix="for example --set engine.block_size=32")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def apply_overrides(raw: dict, overrides: Iterable[str] | dict[str, Any], origin: str) -> dict:
    """A copy of `raw` with each dotted key set (intermediate mappings created as needed)."""
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    out = copy.deepcopy(raw)
    for key, value in items:
        node = out
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                at = ".".join(parts[:depth + 1])
                raise SimkvError(f"cannot set '{key}': '{at}' is {child!r}, not a mapping", file=origin,
                                 field=key, fix=f"set '{at}' as a whole instead")
            node = child
        node[parts[-1]] = value
    return out


def validate_scenario(raw: dict, origin: str) -> Scenario:
    """Validate a raw mapping, translating pydantic's errors into one readable SimkvError."""
    try:
        return Scenario(**raw)
    except ValidationError as err:
        raise _translate(err, origin) from None
    except SimkvError as err:
        raise err.located(origin) from None


def expand_sweep(scenario: Scenario) -> list[tuple[object, Scenario]]:
    """[(value, scenario at that value, without the sweep)], or [(None, scenario)] without a sweep."""
    if scenario.sweep is None:
        return [(None, scenario)]
    base = scenario.model_dump(exclude={"sweep"}, exclude_unset=True)
    out = []
    for value in scenario.sweep.values:
        raw = apply_overrides(base, {scenario.sweep.field: value}, origin="sweep")
        try:
            point = Scenario(**raw)
        except ValidationError as err:
            inner = _translate(err, None)
            raise SimkvError(f"at {scenario.sweep.field}={value!r}: {inner.message}", field=f"sweep: {inner.field}",
                             fix=inner.fix) from None
        out.append((value, point))
    return out


def expand_variants(scenario: Scenario) -> list[tuple[str, Scenario]]:
    """[(name, scenario with that variant's overrides)], or [('base', scenario)] without variants."""
    if not scenario.variants:
        return [("base", scenario)]
    # exclude_unset keeps "the scenario did not say" distinguishable, so presets can fill those fields
    base = scenario.model_dump(exclude={"variants", "sweep"}, exclude_unset=True)
    out = []
    for i, variant in enumerate(scenario.variants):
        raw = apply_overrides(base, variant.set, origin=f"variants[{i}] ({variant.name})")
        try:
            sub = Scenario(**raw)
            sub.model_spec(), sub.gpu_spec()
        except ValidationError as err:
            inner = _translate(err, None)
            raise SimkvError(inner.message, field=f"variants[{i}].set: {inner.field}", fix=inner.fix) from None
        except SimkvError as err:
            raise SimkvError(err.message, field=f"variants[{i}].set: {err.field}", fix=err.fix) from None
        out.append((variant.name, sub))
    return out


# ---------------------------------------------------------------- pydantic error translation


def _translate(err: ValidationError, origin: str | None) -> SimkvError:
    # unknown fields first: a misspelt key also shows up as a missing one, and the suggestion helps most
    errors = sorted(err.errors(), key=lambda e: (e["type"] != "extra_forbidden", -len(e["loc"])))
    seen, lines = set(), []
    first_fix = None
    for e in errors:
        path, model = _field_path(e["loc"])
        if path in seen:
            continue
        seen.add(path)
        msg, fix = _explain(e, path, model)
        lines.append(f"{path or '(top level)'}: {msg}")
        first_fix = first_fix or fix
        if len(lines) == 3:
            break
    more = len({_field_path(e['loc'])[0] for e in errors}) - len(lines)
    text = lines[0] if len(lines) == 1 else "; ".join(lines)
    if more > 0:
        text += f" (and {more} more)"
    field, _, rest = text.partition(": ")
    return SimkvError(rest, file=origin, field=field, fix=first_fix or "see `simkv schema` for every field and its unit")


def _field_path(loc: tuple) -> tuple[str, object]:
    """Drop union-member tags from a pydantic loc; return 'a.b[0].c' and the model owning the last part."""
    parts: list[str] = []
    model: object = _Members([Scenario])
    owner: object = model
    for item in loc:
        if isinstance(item, int):
            if parts:
                parts[-1] += f"[{item}]"
            continue
        if model is not None and item in model.model_fields:
            parts.append(item)
            owner = model
            model = _Members(list(_models_in(model.model_fields[item].annotation))) or None
        elif model is not None and model.pick(item) is not None:
            model = model.pick(item)
        elif item in _SCALAR_TAGS or "[" in item:
            continue
        else:
            parts.append(item)
            owner, model = model, None
    return ".".join(parts), owner


_SCALAR_TAGS = {"str", "int", "float", "bool", "none", "list", "dict"}


class _Members:
    """The model classes a field may hold (one, or a union's members) while walking a loc."""

    def __init__(self, members: list):
        self.members = members
        self.model_fields = {}
        for m in members:
            self.model_fields.update(m.model_fields)

    def __bool__(self) -> bool:
        return bool(self.members)

    def pick(self, tag: str):
        """The member named `tag` (class name or discriminator value), as a _Members."""
        for m in self.members:
            if m.__name__ == tag:
                return _Members([m])
            for f in m.model_fields.values():
                if typing.get_origin(f.annotation) is typing.Literal and tag in typing.get_args(f.annotation):
                    return _Members([m])
        return None


def _models_in(annotation):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)


def _explain(e: dict, path: str, owner) -> tuple[str, str | None]:
    kind = e["type"]
    name = path.rsplit(".", 1)[-1]
    if kind == "extra_forbidden":
        fields = list(getattr(owner, "model_fields", {}) or {})
        close = difflib.get_close_matches(name.split("[")[0], fields, n=1, cutoff=0.5)
        if close:
            return f"unknown field '{name}' (did you mean '{close[0]}'?)", f"rename '{name}' to '{close[0]}'"
        valid = f" (valid here: {', '.join(fields)})" if fields else ""
        return f"unknown field '{name}'{valid}", "remove it, or see `simkv schema`"
    if kind == "missing":
        desc = getattr(owner, "model_fields", {}).get(name)
        what = f" ({desc.description})" if desc is not None and desc.description else ""
        return f"required field is missing{what}", f"add `{name}:` to the scenario"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        ctx = e.get("ctx", {})
        return (f"{e['msg']}", f"set `{ctx.get('discriminator', 'the kind').strip(chr(39))}:` to one of "
                f"{ctx.get('expected_tags', 'the documented kinds')}")
    value = e.get("input")
    shown = f" (got {value!r})" if not isinstance(value, (dict, list)) else ""
    return f"{e['msg']}{shown}", None

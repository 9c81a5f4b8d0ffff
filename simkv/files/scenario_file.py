"""Reading scenario files: YAML → dotted overrides → pydantic validation, with every failure
turned into a `SimkvError` naming the file, the field and the fix (this is an I/O edge)."""

from __future__ import annotations

import copy
import difflib
import os
import re
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

    Order: the file, then overrides of `catalog_files`, then the catalog files are merged, then
    the other overrides (so they can change a catalog entry), then paths are made absolute: every
    relative path, in the file or in an override, is relative to the scenario file's folder.

    Raises:
        SimkvError: naming the file and field, for every kind of bad input.
    """
    path = Path(path)
    raw = read_yaml_mapping(path)
    try:
        items = _override_items(overrides)
    except SimkvError as err:
        raise err.located(str(path)) from None
    catalog = [(k, v) for k, v in items if k.split(".")[0] == "catalog_files"]
    rest = [(k, v) for k, v in items if k.split(".")[0] != "catalog_files"]
    raw = apply_overrides(raw, catalog, origin=str(path))
    _merge_catalog_files(raw, path)
    raw = apply_overrides(raw, rest, origin=str(path))
    _resolve_paths(raw, path)
    scenario = validate_scenario(raw, origin=str(path))
    try:
        scenario.model_spec(), scenario.gpu_spec()
        for _, point in expand_sweep(scenario):
            check_run_length(point)
            for i, (name, sub) in enumerate(expand_variants(point)):
                check_runnable(sub, f"variants[{i}] ({name}): " if point.variants else "")
    except SimkvError as err:
        raise err.located(str(path)) from None
    return scenario


def _override_items(overrides) -> list[tuple[str, Any]]:
    if isinstance(overrides, dict):
        return list(overrides.items())
    return [parse_override(o) if isinstance(o, str) else tuple(o) for o in overrides]


def check_run_length(scenario: Scenario) -> None:
    """Arrival generation must finish: every arrival process can reach run.num_requests (or
    fill run.duration_s) in bounded work (see `simkv.workload.arrivals.check_reachable`)."""
    from simkv.scenario import CLIENT_PROCESSES
    from simkv.workload.arrivals import check_reachable
    w, run = scenario.workload, scenario.run
    specs = [(f"workload.classes[{i}].arrival", c.arrival) for i, c in enumerate(w.classes or [])]
    if w.arrival is not None:
        specs.append(("workload.arrival", w.arrival))
    if run.num_requests is None and run.duration_s is None:
        return  # a trace replay with its own arrivals
    for field, spec in specs:
        if spec.process in CLIENT_PROCESSES:
            continue  # closed-loop and offline clients send exactly run.num_requests
        check_reachable(spec, num_requests=run.num_requests, duration_s=run.duration_s, field=field)


def check_runnable(scenario: Scenario, where: str = "") -> None:
    """Values the schema accepts one by one but that cannot run together (checked at load time
    instead of failing deep inside the simulation): fp8 on a GPU without fp8, a watermark that
    leaves no room for one max_model_len request."""
    from simkv.presets import apply_preset
    e, gpu = apply_preset(scenario.engine), scenario.gpu_spec()
    for name in ("weight_dtype", "kv_cache_dtype"):
        if getattr(e, name) == "fp8" and gpu.fp8_tflops is None:
            raise SimkvError(f"{gpu.description} has no fp8 support (its GPU entry has no fp8_tflops)",
                             field=f"{where}engine.{name}",
                             fix="use bf16 or fp16, or a GPU with fp8 (h100, h200; or give fp8_tflops in your GPU entry)")
    if e.allocator != "paged" or e.watermark == 0:
        return
    from simkv.build import resolve_limits
    from simkv.kv.memory import plan_memory
    try:
        limits = resolve_limits(scenario, e)
        mem = plan_memory(scenario.model_spec(), gpu, tensor_parallel=scenario.hardware.tensor_parallel,
                          gpu_memory_utilization=e.gpu_memory_utilization, weight_dtype=e.weight_dtype,
                          kv_dtype=e.kv_cache_dtype, block_size=e.block_size,
                          max_num_batched_tokens=limits.max_num_batched_tokens, max_num_seqs=limits.max_num_seqs,
                          activation_reserve_gib=e.activation_reserve_gib, num_gpu_blocks=e.num_gpu_blocks)
    except (SimkvError, ValueError):
        return  # reported, with its own message, when the simulation is built
    if mem.capacity_tokens < limits.max_model_len:
        return  # "does not fit", reported when built
    kept = int(e.watermark * mem.num_blocks)
    usable = (mem.num_blocks - kept - 1) * e.block_size
    if usable < limits.max_model_len:
        raise SimkvError(f"watermark {e.watermark:g} keeps {kept} of the {mem.num_blocks} KV blocks free, leaving "
                         f"{max(usable, 0)} tokens: a {limits.max_model_len}-token request could never be admitted",
                         field=f"{where}engine.watermark",
                         fix=f"lower engine.watermark (vLLM uses 0.01), or lower engine.max_model_len to {max(usable, 1)}")


def read_yaml_mapping(path: Path) -> dict:
    """Parse a YAML file that must hold a mapping (see `ScenarioLoader` for the rules)."""
    if not path.exists():
        raise SimkvError("file not found", file=str(path), fix="check the path (scenarios live in scenarios/)")
    if path.is_dir():
        raise SimkvError("is a folder, not a scenario file", file=str(path), fix="name a .yaml file inside it")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SimkvError("not a text file", file=str(path), fix="give a YAML scenario file") from None
    except OSError as err:
        raise SimkvError(f"cannot read the file ({err.strerror})", file=str(path), fix="check its permissions") from None
    data = parse_yaml(text, str(path))
    if data is None:
        raise SimkvError("the file is empty", file=str(path), fix="start from scenarios/quickstart.yaml")
    if not isinstance(data, dict):
        raise SimkvError(f"expected a mapping of fields, got {type(data).__name__}", file=str(path),
                         fix="a scenario is a YAML mapping: model:, hardware:, workload:, run:, ...")
    return data


# ---------------------------------------------------------------- YAML


MAX_DEPTH = 40            # nested mappings/lists; a scenario needs about 6
MAX_NODES = 200_000       # values after expanding aliases (a billion-laughs file expands to 10^9)
MAX_INT_DIGITS = 30       # far beyond any count; Python itself refuses to read 4,300 digits
MAX_TEXT_BYTES = 10 * 2 ** 20


class YamlProblem(Exception):
    """A rule of `ScenarioLoader` broken at a line (turned into a SimkvError by `parse_yaml`)."""

    def __init__(self, problem: str, mark, fix: str):
        self.problem, self.mark, self.fix = problem, mark, fix
        super().__init__(problem)


_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")


class ScenarioLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 core-schema scalars and guard rails.

    Scalars: only `true`/`false` are booleans (not yes/no/on/off), `010` is ten (no octal
    without `0o`), `1:30` is text (no base-60), dates stay text; `~`/`null`/empty are null.
    Refused with the line: a key given twice in one mapping (PyYAML keeps the last silently),
    keys that are not text, integers over MAX_INT_DIGITS digits, nesting deeper than
    MAX_DEPTH, and aliases expanding to more than MAX_NODES values (billion laughs) or into
    themselves."""

    yaml_implicit_resolvers: dict = {}

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlProblem(f"nesting deeper than {MAX_DEPTH} levels", self.peek_event().start_mark,
                                  "a scenario needs only a few levels of mappings and lists")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                    shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "a " + key_node.id
                    raise YamlProblem(f"key {shown!r} is not text", key_node.start_mark,
                                      "keys are field names: quote it if it is a name")
                key = key_node.value
                if key in seen:
                    raise YamlProblem(f"duplicate key '{key}' (first given at line {seen[key]})",
                                      key_node.start_mark, f"give '{key}' once: merge the two, or delete one")
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        text = str(self.construct_scalar(node)).replace("_", "")
        digits = text.lstrip("+-")
        if len(digits) > MAX_INT_DIGITS:
            raise YamlProblem(f"an integer of {len(digits)} digits", node.start_mark,
                              "give a plausible number (counts in a scenario have at most a dozen digits)")
        try:
            if digits.startswith("0o"):
                value = int(digits[2:], 8)
            elif digits.startswith("0x"):
                value = int(digits[2:], 16)
            else:
                value = int(digits, 10)
        except ValueError:
            raise YamlProblem(f"{text!r} is not an integer", node.start_mark, "write a decimal integer") from None
        return -value if text.startswith("-") else value

    def construct_yaml_float(self, node):
        text = self.construct_scalar(node).replace("_", "")
        low = text.lower()
        if low in (".inf", "+.inf", "-.inf", ".nan"):
            return float(low.replace(".", ""))
        try:
            return float(text)
        except ValueError:
            raise YamlProblem(f"{text!r} is not a number", node.start_mark, "write a decimal number") from None


ScenarioLoader.add_constructor("tag:yaml.org,2002:int", ScenarioLoader.construct_yaml_int)
ScenarioLoader.add_constructor("tag:yaml.org,2002:float", ScenarioLoader.construct_yaml_float)
ScenarioLoader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)
ScenarioLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                     list("tTfF"))
ScenarioLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
ScenarioLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
ScenarioLoader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"),
                                     ["~", "n", "N", ""])
ScenarioLoader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])


def _check_expansion(root) -> None:
    """Refuse alias graphs that expand beyond MAX_NODES values, or into themselves."""
    sizes: dict[int, int] = {}
    stack: list[tuple[object, bool]] = [(root, False)]
    open_: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            kids = _children(node)
            sizes[key] = 1 + sum(sizes[id(k)] for k in kids)
            open_.discard(key)
            if sizes[key] > MAX_NODES:
                raise YamlProblem(f"aliases expand to more than {MAX_NODES:,} values", node.start_mark,
                                  "write the values out, or use fewer nested aliases (*name)")
            continue
        if key in sizes:
            continue
        if key in open_:
            raise YamlProblem("an alias refers to the mapping or list that contains it", node.start_mark,
                              "remove the self-referencing alias (*name)")
        open_.add(key)
        stack.append((node, True))
        for kid in _children(node):
            if id(kid) in open_:
                raise YamlProblem("an alias refers to the mapping or list that contains it", kid.start_mark,
                                  "remove the self-referencing alias (*name)")
            if id(kid) not in sizes:
                stack.append((kid, False))


def _children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def parse_yaml(text: str, origin: str, field: str | None = None):
    """Parse YAML text with `ScenarioLoader`; every problem becomes a SimkvError with its line."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
        raise SimkvError(f"larger than {MAX_TEXT_BYTES // 2 ** 20} MiB", file=origin, field=field,
                         fix="a scenario is a short text file; put long data in a trace file")
    try:
        return yaml.load(text, Loader=ScenarioLoader)  # noqa: S506 - a SafeLoader subclass
    except YamlProblem as err:
        raise SimkvError(f"{_where(err.mark)}: {err.problem}", file=origin, field=field, fix=err.fix) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SimkvError(f"YAML syntax error at {_where(mark)}: {problem}", file=origin, field=field,
                         fix="check indentation, colons and quotes around that line") from None
    except RecursionError:
        raise SimkvError("YAML nested too deeply", file=origin, field=field,
                         fix=f"a scenario needs only a few levels (at most {MAX_DEPTH})") from None


def _where(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"


def _merge_catalog_files(raw: dict, path: Path) -> None:
    files = raw.get("catalog_files")
    if files is None:
        return
    if isinstance(files, str):
        files = raw["catalog_files"] = [files]
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise SimkvError(f"expected a list of catalog file names, got {files!r:.80}", file=str(path),
                         field="catalog_files", fix="for example catalog_files: [my-gpus.yaml]")
    for key in ("models", "gpus"):
        if not isinstance(raw.get(key) or {}, dict):
            raise SimkvError(f"expected a mapping of names to entries, got {type(raw[key]).__name__}", file=str(path),
                             field=key, fix=f"{key}: {{name: {{...}}}}")
    for i, name in enumerate(files):
        cat_path = (path.parent / name)
        field = f"catalog_files[{i}]"
        if not cat_path.is_file():
            raise SimkvError(f"catalog file '{name}' not found next to the scenario", file=str(path),
                             field=field, fix=f"paths are relative to the scenario file's folder ({path.parent})")
        models, gpus = read_catalog(cat_path)
        raw["models"] = {**(raw.get("models") or {}), **models}
        raw["gpus"] = {**(raw.get("gpus") or {}), **gpus}


def _resolve_paths(raw: dict, path: Path) -> None:
    """Inline GPU calibration folders and the trace file, relative to the scenario's folder."""
    gpus = raw.get("gpus")
    for entry in (gpus.values() if isinstance(gpus, dict) else ()):
        if isinstance(entry, dict):
            _resolved_calibration(entry, path)
    gpu = (raw.get("hardware") or {}).get("gpu") if isinstance(raw.get("hardware"), dict) else None
    if isinstance(gpu, dict):
        _resolved_calibration(gpu, path)
    _resolve_trace_path(raw, path)
    _resolve_step_table_paths(raw, path)


def _resolve_step_table_paths(raw: dict, path: Path) -> None:
    """`cost: {table: ...}` (also in a variant's set) is relative to the scenario's folder."""
    def fix(holder: dict, key: str) -> None:
        value = holder.get(key)
        if isinstance(value, dict) and isinstance(value.get("table"), str):
            value["table"] = os.path.abspath(path.parent / value["table"])
        elif key == "cost.table" and isinstance(value, str):
            holder[key] = os.path.abspath(path.parent / value)
    fix(raw, "cost")
    for variant in raw.get("variants") or () if isinstance(raw.get("variants"), list) else ():
        if isinstance(variant, dict) and isinstance(variant.get("set"), dict):
            fix(variant["set"], "cost")
            fix(variant["set"], "cost.table")


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
        raise SimkvError(f"override '{text[:80]}' is not of the form field.path=value", field="--set",
                         fix="for example --set engine.block_size=32")
    if not value.strip():
        return key.strip(), ""
    try:
        parsed = yaml.load(value, Loader=ScenarioLoader)  # noqa: S506 - a SafeLoader subclass
    except YamlProblem as err:
        raise SimkvError(f"value {value[:60]!r}: {err.problem}", field=f"--set {key.strip()}", fix=err.fix) from None
    except yaml.YAMLError:
        parsed = value
    except RecursionError:
        raise SimkvError("value nested too deeply", field=f"--set {key.strip()}", fix="give a simpler value") from None
    return key.strip(), parsed


def apply_overrides(raw: dict, overrides: Iterable[str] | dict[str, Any], origin: str) -> dict:
    """A copy of `raw` with each dotted key set (intermediate mappings created as needed)."""
    items = _override_items(overrides)
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
    return [(variant.name, _derived(base, variant.set, f"variants[{i}]", variant.name))
            for i, variant in enumerate(scenario.variants)]


def _derived(base: dict, changes: dict, where: str, name: str) -> Scenario:
    """`base` (a scenario's set fields) with `changes` applied, validated with its model and GPU
    resolved; an error names `where` (e.g. `variants[0]`, `fleet.pools[1]`)."""
    raw = apply_overrides(base, changes, origin=f"{where} ({name})")
    try:
        sub = Scenario(**raw)
        sub.model_spec(), sub.gpu_spec()
    except ValidationError as err:
        inner = _translate(err, None)
        raise SimkvError(inner.message, field=f"{where}.set: {inner.field}", fix=inner.fix) from None
    except SimkvError as err:
        raise SimkvError(err.message, field=f"{where}.set: {err.field}", fix=err.fix) from None
    return sub


# ---------------------------------------------------------------- pydantic error translation

SUGGEST_CUTOFF = 0.75   # difflib similarity: 'engien' -> 'engine' (0.83), but not 'cluster' -> 'cost' (0.55)


def _translate(err: ValidationError, origin: str | None) -> SimkvError:
    # unknown fields first: a misspelt key also shows up as a missing one, and the suggestion helps most
    errors = sorted(err.errors(), key=lambda e: (e["type"] != "extra_forbidden", -len(e["loc"])))
    # `str | Spec` fields: a spec with a bad field also fails the str branch; that is noise
    paths = [_field_path(e["loc"])[0] for e in errors]
    errors = [e for e, p in zip(errors, paths)
              if not (e["type"] == "string_type" and any(q.startswith(p + ".") for q in paths))] or errors
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
        close = difflib.get_close_matches(name.split("[")[0], fields, n=1, cutoff=SUGGEST_CUTOFF)
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
    shown = f" (got {_short(value)})" if not isinstance(value, (dict, list)) else ""
    msg = e["msg"].removeprefix("Value error, ")
    if msg.startswith("expected a number"):
        return msg + ("" if kind == "value_error" else shown), ("write a plain number, without quotes (YAML's "
                                                               "true/false are booleans, not 1/0)")
    if kind == "bool_type":
        return f"{msg}{shown}", "write true or false"
    if kind == "value_error":
        return msg, ("rename it" if "results folder" in msg else None)
    return f"{msg}{shown}", None


def _short(value) -> str:
    text = repr(value) if not isinstance(value, int) or abs(value) < 10 ** 30 else "a huge integer"
    return text if len(text) <= 60 else text[:57] + "..."


def pool_scenarios(scenario: Scenario) -> list[tuple[str, Scenario]]:
    """[(pool name, the scenario with the pool's overrides and without `fleet`)]."""
    base = scenario.model_dump(exclude={"variants", "sweep", "fleet"}, exclude_unset=True)
    return [(pool.name, _derived(base, pool.set, f"fleet.pools[{i}]", pool.name))
            for i, pool in enumerate(scenario.fleet.pools)]

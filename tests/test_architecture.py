"""The architecture, checked by walking the import graph (ast, no imports executed):

- the core (every simkv module that is not an edge) reaches no file-format or plotting module,
  not even transitively, and no edge module; the run driver `simkv.simulate` is the one bridge;
- no module imports itself back through others (no import circles);
- the pipeline: simulate, the CLI and `simkv validate` derive variants in one place.

An edge is named by where it lives, so a new core module is checked without being listed."""

from __future__ import annotations

import ast

import pytest

import simkv
from simkv.errors import SimkvError

from conftest import ROOT, small_scenario

PKG = ROOT / "simkv"
# the file-format, plotting and dataframe modules the core must never reach
FILE_FORMATS = {"csv", "json", "yaml", "gzip", "matplotlib", "pandas", "pyarrow", "tomllib", "pickle"}
# Modules that read or write files, render, run many simulations, or talk to a GPU: the edges.
# `simkv.simulate` is the bridge (it resolves the trace and the calibration, then runs the core),
# `simkv.result` the Result value with its file codec; the schema (`scenario`, `catalog`) is read
# from YAML files and handed to the core, which imports it only for type checking.
EDGES = ("simkv.files", "simkv.report", "simkv.studies", "simkv.gpu", "simkv.cli", "simkv.simulate", "simkv.result",
         "simkv.scenario", "simkv.catalog")


def _name(path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PKG.rglob("*.py")}


def _is_edge(module: str) -> bool:
    return any(module == e or module.startswith(e + ".") for e in EDGES)


def _imports(module: str) -> set[str]:
    """Every module `module` imports (also inside functions), except under `if TYPE_CHECKING:`
    and in a module-level `__getattr__` (a lazy re-export, loaded only when the name is used)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            skip.update(id(n) for n in ast.walk(node))
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES)
    return out


def _loaded_with(module: str) -> set[str]:
    """`module` and the packages above it (importing simkv.kv.paged runs simkv/kv/__init__.py),
    except the root package: `simkv/__init__.py` is the public facade over all the layers."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(2 if parts[0] == "simkv" else 1, len(parts) + 1)}


GRAPH = {m: _imports(m) for m in MODULES}


def _reach(start: str) -> dict[str, str | None]:
    """Every module importing `start` loads, with the module that imported it first."""
    via: dict[str, str | None] = {start: None}
    stack = [start]
    while stack:
        m = stack.pop()
        for dep in sorted(GRAPH.get(m, ())):
            for d in sorted(_loaded_with(dep)) if dep.startswith("simkv") else [dep]:
                if d not in via:
                    via[d] = m
                    stack.append(d)
    return via


def _chain(via: dict, end: str) -> str:
    out = [end]
    while via[out[-1]] is not None:
        out.append(via[out[-1]])
    return " <- ".join(out)


CORE = sorted(m for m in MODULES if m != "simkv" and not _is_edge(m))  # simkv/__init__: the facade


def test_the_core_is_found_not_listed():
    for m in ("simkv.kv.paged", "simkv.sched.chunked", "simkv.cost.calibrated", "simkv.workload.stream",
              "simkv.engine", "simkv.metrics", "simkv.request", "simkv.kv.memory", "simkv.build", "simkv.cost.select"):
        assert m in CORE
    assert len(CORE) > 40


@pytest.mark.parametrize("module", CORE)
def test_core_reaches_no_file_format_nor_edge(module):
    via = _reach(module)
    bad = [m for m in via if m.split(".")[0] in FILE_FORMATS or (m.startswith("simkv.") and _is_edge(m))]
    assert not bad, "\n".join(_chain(via, m) for m in bad)


@pytest.mark.parametrize("module", CORE)
def test_core_neither_prints_nor_opens(module):
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not calls & {"print", "open", "input"}


def test_no_import_circles():
    """No module imports itself back (package __init__ re-exports are not design dependencies)."""
    edges = {m: {d for d in deps if d in MODULES and d != m and not m.startswith(d + ".")} for m, deps in GRAPH.items()}
    circles = []
    for start in sorted(edges):
        stack, seen = [(start, (start,))], set()
        while stack:
            node, path = stack.pop()
            for d in edges[node]:
                if d == start:
                    circles.append(" -> ".join(path + (d,)))
                elif d not in seen and d > start:   # report each circle once, from its smallest module
                    seen.add(d)
                    stack.append((d, path + (d,)))
    assert not circles, "\n".join(circles)


def test_the_walk_sees_a_real_dependency():
    """The walker itself: it finds the bridge's reads and the core's absence of them."""
    assert "simkv.files.calibration" in _reach("simkv.simulate")
    assert "yaml" in _reach("simkv.scenario")
    assert "simkv.cost.tables" in _reach("simkv.cost.calibrated")


def test_unknown_variant_is_a_simkv_error_naming_the_variants():
    sc = small_scenario(variants=[{"name": "p", "set": {"engine.allocator": "paged"}},
                                  {"name": "c", "set": {"engine.allocator": "contiguous"}}])
    with pytest.raises(SimkvError, match="no variant 'x'") as err:
        simkv.simulate(sc, "x")
    assert err.value.fix == "one of: p, c"


def test_simkv_holds_at_most_a_dozen_loose_modules():
    """Modules are grouped by role (features/, metrics/, kv/, files/, report/, studies/ ...);
    the top level keeps the facade, the schema, the wiring and the run driver."""
    loose = sorted(p.name for p in PKG.glob("*.py"))
    assert len(loose) <= 12, loose


# ---------------------------------------------------------------- written contracts (design 5.3, 5.5)

def test_schedulers_read_declared_capabilities_instead_of_sniffing():
    """sched/*.py asks the allocator what it can do (`paged`, `prefix_caching`, `offloads`,
    `reserve_upfront`), never its class or whether it has a method."""
    bad = []
    for path in sorted((PKG / "sched").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("isinstance", "hasattr", "getattr") and node.args
                    and any(w in ast.unparse(node.args[0]) for w in ("kv", "alloc"))):
                bad.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, "\n".join(bad)


def _protocol_members(proto) -> set[str]:
    own = set()
    for klass in proto.__mro__:
        if klass.__name__ in ("Protocol", "Generic", "object"):
            continue
        own |= {n for n in vars(klass) if not n.startswith("_")} | set(getattr(klass, "__annotations__", {}))
    return own


def test_every_allocator_offers_what_its_protocol_lists():
    from simkv.kv.base import KVAllocator, OffloadKV, PagedKV, PrefixKV, RegionKV
    from simkv.kv.buddy import BuddyAllocator
    from simkv.kv.contiguous import ContiguousAllocator
    from simkv.kv.offload import OffloadingPrefixCache, OffloadTiers
    from simkv.kv.paged import PagedAllocator
    from simkv.kv.prefix_cache import PrefixCachingAllocator
    from simkv.kv.compiled_prefix_cache import CompiledPrefixCache, compiled_kernels
    cases = [(ContiguousAllocator(64), RegionKV), (BuddyAllocator(64), RegionKV), (PagedAllocator(4, 16), PagedKV),
             (PrefixCachingAllocator(4, 16), PrefixKV),
             *([(CompiledPrefixCache(4, 16), PrefixKV)] if compiled_kernels() is not None else []),
             (OffloadingPrefixCache(4, 16, OffloadTiers([], "write_through", 1024)), OffloadKV)]
    for alloc, proto in cases:
        missing = sorted(m for m in _protocol_members(proto) if not hasattr(alloc, m))
        assert not missing, (type(alloc).__name__, missing)
        assert alloc.paged == (PagedKV in proto.__mro__)
        assert alloc.prefix_caching == (PrefixKV in proto.__mro__)
        assert alloc.offloads == (proto is OffloadKV)
        assert alloc.shared_excess == 0 and alloc.reserve_upfront is False
    assert _protocol_members(KVAllocator) < _protocol_members(PagedKV) < _protocol_members(PrefixKV)


def test_scheduler_registry_covers_every_schema_name_and_declares_its_needs():
    import typing
    from simkv.scenario import Engine
    from simkv.sched import SCHEDULERS
    names = set(typing.get_args(Engine.model_fields["scheduler"].annotation))
    assert set(SCHEDULERS) == names
    for name, cls in SCHEDULERS.items():
        assert cls.name == name and cls.needs in ("paged", "contiguous", None)
        assert callable(cls.from_engine)
    assert {n for n, c in SCHEDULERS.items() if c.needs == "paged"} == {"chunked", "prefill-first", "tgi", "sglang", "trtllm"}
    assert {n for n, c in SCHEDULERS.items() if c.supports_prefix_caching} == {"chunked", "tgi", "sglang", "trtllm"}
    build_src = (PKG / "build.py").read_text(encoding="utf-8")
    assert "SCHEDULERS[e.scheduler].from_engine" in build_src and "e.scheduler == \"chunked\"" not in build_src


def test_the_kv_breakdown_rows_are_named_once_in_kv():
    """One owner (design 5.4): the rows are KVUsage's fields, in order; metrics, plots and the
    results columns use those names, and the window breakdown lives in kv/usage.py."""
    import dataclasses

    from simkv.kv import usage
    from simkv.kv.base import EXTERNAL, FREE, INTERNAL, KV_ROWS, RESERVED, TOKEN, KVUsage
    from simkv.metrics import KV_FIELDS
    from simkv.report.plots import KV_LAYERS
    from simkv.result import _INT_COLUMNS
    assert KV_ROWS == tuple(f.name for f in dataclasses.fields(KVUsage))[1:]
    assert (TOKEN, RESERVED, INTERNAL, EXTERNAL, FREE) == tuple(range(5))
    assert KV_FIELDS is KV_ROWS and tuple(k for k, _, _ in KV_LAYERS) == KV_ROWS and set(KV_ROWS) <= _INT_COLUMNS
    u = KVUsage(100, 10, 20, 30, 15, 25)
    assert u.row()[TOKEN] == 10 and u.row()[FREE] == 25
    assert callable(usage.window_breakdown) and callable(usage.prefilling_breakdown)
    batch_src = (PKG / "sched" / "batch.py").read_text(encoding="utf-8")
    assert "def _prefilling_usage" not in batch_src and "split_window" not in batch_src


def test_the_summary_has_the_written_shape():
    """summary.json's sections and their fields are the ones simkv.metrics.summary declares."""
    from typing import get_type_hints

    from simkv.metrics.summary import Batch, KvFractions, RequestCounts, Setup, Summary, Throughput
    res = simkv.simulate(small_scenario(slo={"ttft_s": 1.0}))
    s = res.summary
    assert set(s) <= set(Summary.__annotations__), set(s) - set(Summary.__annotations__)
    for section, shape in (("requests", RequestCounts), ("throughput", Throughput), ("batch", Batch),
                           ("setup", Setup)):
        assert set(s[section]) <= set(get_type_hints(shape)), (section, set(s[section]) - set(get_type_hints(shape)))
    for section in ("throughput", "batch"):   # total TypedDicts: every field is always there
        assert set(s[section]) == set(get_type_hints({"throughput": Throughput, "batch": Batch}[section]))
    assert set(s["kv_cache"]["mean_fraction"]) == set(get_type_hints(KvFractions))

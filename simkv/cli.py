"""The `simkv` command line: run, schema, catalog. Parses arguments, calls the library, prints;
every input problem becomes a one-paragraph message and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from simkv.errors import SimkvError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except SimkvError as err:
        print(f"simkv: error: {err.render()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("simkv: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simkv", description="Simulate how LLM serving engines spend KV-cache memory and time.")
    sub = p.add_subparsers(dest="command")
    run = sub.add_parser("run", help="simulate a scenario file (all its variants) and write a results folder")
    run.add_argument("scenario", help="scenario YAML file")
    run.add_argument("-o", "--output", help="results folder (default results/<scenario name>)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                     help="override a field, e.g. --set engine.block_size=32 (repeatable)")
    run.add_argument("--no-figures", action="store_true", help="skip figures and report (faster)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.add_argument("--intervals", type=int, metavar="N", help="prediction intervals from N replicates (other seeds, "
                     "resampled cost-model errors): [p5, p95] per headline metric (same as run.intervals)")
    run.set_defaults(func=cmd_run)
    schema = sub.add_parser("schema", help="print the JSON Schema of scenario files")
    schema.set_defaults(func=cmd_schema)
    st = sub.add_parser("step-time", help="predict engine step times for a table of step shapes")
    st.add_argument("--gpu", default="h100", help="catalog GPU (default h100), or one named in --catalog")
    st.add_argument("--catalog", metavar="GPU.yaml", help="extra GPU entries, e.g. the gpu.yaml `simkv calibrate` writes")
    st.add_argument("--model", default="llama3-8b", help="catalog model (default llama3-8b)")
    st.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (default 1; must divide the model's heads)")
    st.add_argument("--dtype", choices=["bf16", "fp8"], default="bf16", help="weight precision")
    st.add_argument("--cost", choices=["calibrated", "roofline"], default="calibrated")
    st.add_argument("--batches", required=True, metavar="FILE.csv",
                    help="columns prefill_seqs,prefill_len,decode_batch,decode_ctx[,layers]")
    st.add_argument("-o", "--output", metavar="OUT.csv", help="write the table with predicted_ms (default: print)")
    st.set_defaults(func=cmd_step_time)
    sw = sub.add_parser("sweep", help="run a sweep file (grids and zips over any field) on local processes, cached")
    sw.add_argument("sweep", help="sweep YAML file")
    sw.add_argument("-o", "--output", help="results folder (default results/<sweep file name>)")
    sw.add_argument("--workers", type=int, default=0, help="local worker processes (default: all cores)")
    sw.add_argument("--executor", choices=["local", "ray"], default="local",
                    help="where points run: local processes (default) or a Ray cluster (pip install 'simkv[ray]')")
    sw.add_argument("--address", help="Ray cluster address (host:port from `ray start --head`); default: a private Ray on this "
                         "machine, listening on 127.0.0.1 only")
    sw.set_defaults(func=cmd_sweep)
    cap = sub.add_parser("capacity", help="highest arrival rate one replica sustains within percentile SLOs")
    cap.add_argument("scenario", help="scenario YAML file (its arrival rate is the starting point)")
    cap.add_argument("--slo", required=True, help="e.g. ttft_p99=2s,tbt_p99=100ms (metrics ttft/tbt/e2e/tpot/queue)")
    cap.add_argument("--variant", help="which variant to size (default: the first)")
    cap.add_argument("--target-rate", type=float, help="load to serve (requests/s): prints the GPUs needed; on a "
                     "fleet scenario, sizes every pool for it")
    cap.add_argument("--tokens-per-day", type=float, help="fleet scenarios: load to serve as prompt + output tokens "
                     "a day (instead of --target-rate)")
    cap.add_argument("--price", help="$ per GPU-hour, one number or per GPU type (h100=2.5,h200=3.4): prints the cost "
                     "per million tokens (fleets: $/month, per million input and output tokens)")
    cap.add_argument("--input-weight", type=float, default=1.0,
                     help="fleet pricing: what a prompt token costs in generated tokens (default 1)")
    cap.add_argument("--max-replicas", type=int, default=256, help="fleet sizing: most replicas per pool (default 256)")
    cap.add_argument("--tolerance", type=float, default=0.02, help="bisect until the bracket is this tight (fraction)")
    cap.add_argument("--seeds", type=int, default=3,
                     help="request streams every rate is checked on; the answer holds on all of them (default 3)")
    cap.add_argument("--max-rate", type=float,
                     help="highest rate the search tries (requests/s; default 1024 x the scenario's rate)")
    cap.add_argument("--max-probes", type=int, default=40, help="most rates the search tries (default 40)")
    cap.add_argument("--intervals", type=int, default=0, metavar="N",
                     help="also search N replicates (own seed, step costs x resampled held-out errors) and print "
                          "the range of capacities (default 0: off)")
    cap.add_argument("--json", action="store_true", help="machine-readable output")
    cap.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    cap.set_defaults(func=cmd_capacity)
    plot = sub.add_parser("plot", help="re-draw the figures and report of a saved results folder")
    plot.add_argument("folder", help="a folder written by `simkv run`")
    plot.set_defaults(func=cmd_plot)
    trace = sub.add_parser("trace", help="request trace tools")
    trace_sub = trace.add_subparsers(dest="trace_command")
    ts = trace_sub.add_parser("stats", help="count, span, rate and length statistics of a trace")
    ts.add_argument("trace", help="a shipped trace name (azure2023_conv, mooncake_conversation, ...) or a file")
    ts.add_argument("--format", choices=["csv", "jsonl"], help="file format (default from the name)")
    ts.add_argument("--arrival", help="arrival time column of your file (omit for lengths only)")
    ts.add_argument("--prompt", help="prompt tokens column of your file")
    ts.add_argument("--output", help="output tokens column of your file")
    ts.add_argument("--time-unit", default="s", choices=["s", "ms", "us", "datetime"])
    ts.add_argument("--json", action="store_true", help="machine-readable output")
    ts.set_defaults(func=cmd_trace_stats)
    cost = sub.add_parser("cost", help="step-time model tools")
    cost_sub = cost.add_subparsers(dest="cost_command")
    rep = cost_sub.add_parser("report", help="cross-validate the calibrated model; write docs/cost-model.md and figures")
    rep.add_argument("--gpu", action="append", help="GPU to validate (repeatable; default all with measurements)")
    rep.add_argument("-o", "--output", default="docs/cost-model.md", help="markdown file (its generated section is replaced)")
    rep.add_argument("--figures", default="docs/figures/cost-model", help="folder for the figures")
    rep.set_defaults(func=cmd_cost_report)
    va = sub.add_parser("validate", help="run the scenario's schedule on a real mini engine; measured vs predicted")
    va.add_argument("scenario", help="scenario YAML file")
    where = va.add_mutually_exclusive_group()
    where.add_argument("--gpu", action="store_true", help="run on the CUDA GPU (bf16)")
    where.add_argument("--device", choices=["cpu", "cuda"], default=None, help="cpu: a tiny model in float32 (tests)")
    va.add_argument("--layers", type=int, help="decoder layers of the mini engine (default: the model's; 2 on cpu)")
    va.add_argument("--requests", type=int, help="simulate only this many requests (default: the scenario's run)")
    va.add_argument("--variant", help="which variant's schedule (default: the first)")
    va.add_argument("--shapes", choices=["tiny", "model"], default=None,
                    help="tiny: a tiny Llama-style model (default on cpu); model: the scenario's own shapes (default on cuda)")
    va.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    va.add_argument("-o", "--output", help="folder (default results/validate-<scenario name>)")
    va.set_defaults(func=cmd_validate)
    ca = sub.add_parser("calibrate", help="measure this GPU's operators and layer steps (the cost model's tables)")
    where = ca.add_mutually_exclusive_group()
    where.add_argument("--gpu", action="store_true", help="measure the CUDA GPU (default)")
    where.add_argument("--device", choices=["cpu", "cuda"], default=None, help="cpu: a small grid (tests)")
    ca.add_argument("--models", help="comma-separated calibration shapes (llama3-8b, llama2-7b, llama3-70b-tp4)")
    ca.add_argument("--quick", action="store_true", help="every third shape of the reference grid")
    ca.add_argument("--shapes", choices=["tiny", "real"], default=None,
                    help="tiny: a tiny layer in float32 (default on cpu without --models: seconds, checks the machinery); "
                         "real: the calibration models in bfloat16 (default on cuda; slow on CPUs without native bf16)")
    ca.add_argument("--reference", default="h100", help="shipped tables whose shapes to measure and compare with")
    ca.add_argument("--name", help="catalog name of this GPU in gpu.yaml (default from the device name)")
    ca.add_argument("-o", "--output", default="results/calibration", help="folder for the tables")
    ca.set_defaults(func=cmd_calibrate)
    rp = sub.add_parser("reproduce", help="regenerate every figure and generated page of docs/ from scenarios/")
    rp.add_argument("--only", action="append", metavar="NAME", help="one manifest entry (repeatable; default all)")
    rp.add_argument("-o", "--output", default="docs", help="docs folder to write (default docs)")
    rp.add_argument("--list", action="store_true", help="print the manifest and exit")
    rp.add_argument("--check", action="store_true",
                    help="regenerate into a temporary folder and compare byte for byte with the docs folder (exit 1 on a difference)")
    rp.set_defaults(func=cmd_reproduce)
    fho = sub.add_parser("fit-host-overhead", help="fit the engine's host time per step (fixed + per sequence) to a step log")
    fho.add_argument("steplog", help="CSV with num_seqs and host_ms (or step_ms and gpu_ms) per step")
    fho.add_argument("--json", action="store_true", help="machine-readable output")
    fho.set_defaults(func=cmd_fit_host_overhead)
    cat = sub.add_parser("catalog", help="list the models and GPUs simkv knows")
    cat.add_argument("--json", action="store_true", help="machine-readable output")
    cat.add_argument("--presets", action="store_true", help="list the engine presets with their defaults and sources")
    cat.set_defaults(func=cmd_catalog)
    return p


class _Progress:
    """A progress bar on stderr, shown only once a run has taken more than two seconds."""

    def __init__(self, label: str, quiet: bool) -> None:
        self.label, self.quiet = label, quiet
        self.start = time.perf_counter()
        self.last = self.start if not sys.stderr.isatty() else 0.0
        self.shown = False
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int, sim_s: float) -> None:
        now = time.perf_counter()
        elapsed = now - self.start
        if self.quiet or elapsed < 2.0 or now - self.last < (0.2 if self.tty else 10.0):
            return
        self.last, self.shown = now, True
        frac = done / total if total else 1.0
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        text = f"{self.label} [{bar}] {100 * frac:5.1f}%  {done}/{total} requests arrived  sim {sim_s:,.0f} s  wall {elapsed:.0f} s"
        print(("\r" if self.tty else "") + text, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.shown and self.tty:
            print(file=sys.stderr)


def cmd_run(args) -> int:
    from simkv.files.scenario_file import expand_sweep, load_scenario
    from simkv.report.markdown import terminal_table

    from simkv.files.results import check_output_names
    from simkv.files.safe_paths import check_root
    if getattr(args, "intervals", None) is not None:
        if not 0 <= args.intervals <= 1000:
            raise SimkvError(f"--intervals {args.intervals}", fix="give 0..1000 replicates")
        args.overrides = [*args.overrides, f"run.intervals={args.intervals}"]
    scenario = load_scenario(args.scenario, args.overrides)
    check_output_names(scenario, args.scenario)
    out = Path(args.output) if args.output else _default_output(scenario.name, args.scenario, "name")
    check_root(out)
    wall = time.perf_counter()
    points, total = [], 0
    for value, point in expand_sweep(scenario):
        label = "" if value is None else f"{scenario.sweep.field}={value} "
        results, n = _run_point(point, args, label)
        points.append((value, results))
        total += n * len(results)
        if value is not None:
            print(f"{label}")
            print(terminal_table(results))
    wall = time.perf_counter() - wall
    if scenario.sweep is not None:
        from simkv.files.results import scenario_title, write_sweep
        write_sweep(scenario.sweep.field, points, out, scenario_title(scenario, points))
        print(f"{scenario.name}: {total:,} simulated requests in {wall:.1f} s wall ({total / wall:,.0f} requests/s)")
        print(f"results: {out}/ (sweep.csv, sweep.png, report.md, one folder per value)")
        return 0
    results = points[0][1]
    from simkv.files.results import write_results
    write_results(results, out, figures=not args.no_figures)
    print(f"{scenario.name}: {total // len(results):,} requests x {len(results)} run(s) simulated in {wall:.1f} s wall "
          f"({total / wall:,.0f} requests/s)")
    print(terminal_table(results))
    print(f"results: {out}/ (summary.json, requests.csv, timeseries.csv{'' if args.no_figures else ', report.md, figures'})")
    return 0


def _default_output(name: str, file: str, field: str) -> Path:
    """results/<name> when no -o is given; `results/` (simkv's own default) is created if missing."""
    from simkv.files.safe_paths import plain_name
    folder = Path("results") / plain_name(name, file=file, field=field)
    try:
        folder.parent.mkdir(exist_ok=True)
    except OSError:
        pass                      # writing then names the problem
    return folder


def _run_point(scenario, args, label: str):
    """Every variant of one scenario on its request stream: ({variant: Result}, requests)."""
    from simkv.simulate import prepared, run_simulation, stream_for

    def locate(err: SimkvError, name: str) -> SimkvError:
        where = ", ".join(p for p in (label.strip(), f"variant {name}" if scenario.variants else "") if p)
        field = f"{err.field} ({where})" if where else err.field
        return SimkvError(err.message, file=args.scenario, field=field, fix=err.fix)

    stream = stream_for(scenario)
    results = {}
    for name, overrides, sim in prepared(scenario, stream=stream, locate=locate):
        bar = _Progress(f"{label}{name}", args.quiet)
        try:
            results[name] = run_simulation(sim, name, bar, overrides)
        except SimkvError as err:
            raise locate(err, name) from None
        bar.close()
        from simkv.simulate import with_intervals
        with_intervals(results[name], sim.scenario)
    return results, stream.num_requests


def cmd_step_time(args) -> int:
    from simkv.studies.steptime_table import predict_table
    gpus, models = None, {}
    if args.catalog:
        from simkv.files.scenario_file import read_catalog
        models, gpus = read_catalog(Path(args.catalog))
    _check_tensor_parallel(args.tp, args.model, models)
    text = predict_table(Path(args.batches), gpu=args.gpu, model=args.model, tensor_parallel=args.tp,
                         dtype=args.dtype, cost=args.cost, gpus=gpus)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    return 0


def _check_tensor_parallel(tp: int, model: str, extra_models: dict) -> None:
    """--tp is a degree the model's attention heads split into (as a scenario's hardware.tensor_parallel)."""
    from simkv.catalog import builtin_models
    from simkv.specs import ModelSpec
    spec = builtin_models().get(model)
    if model in extra_models:
        spec = ModelSpec(**extra_models[model])
    degrees = None
    if spec is not None:
        degrees = [d for d in range(1, spec.num_heads + 1) if spec.num_heads % d == 0
                   and (spec.num_kv_heads % d == 0 or d % spec.num_kv_heads == 0)]
    if tp < 1 or (degrees is not None and tp not in degrees):
        why = "is not a tensor-parallel degree" if tp < 1 else \
            f"does not divide {model}'s {spec.num_heads} attention heads ({spec.num_kv_heads} KV heads)"
        raise SimkvError(f"--tp {tp} {why}", field="--tp",
                         fix=f"use one of {', '.join(map(str, degrees))}" if degrees else "use 1 or more GPUs")


def cmd_cost_report(args) -> int:
    from simkv.report.cost_validation import error_stats, write_report
    results = write_report(Path(args.output), Path(args.figures), args.gpu)
    for v in results:
        loo, lomo = error_stats(v.loo, v.measured), error_stats(v.lomo, v.measured)
        print(f"{v.gpu}: leave-one-out |error| median {100 * loo['median']:.1f}%, p90 {100 * loo['p90']:.1f}%, "
              f"max {100 * loo['max']:.1f}%; model-shape-out median {100 * lomo['median']:.1f}%, "
              f"p90 {100 * lomo['p90']:.1f}%, max {100 * lomo['max']:.1f}%")
    print(f"wrote {args.output} and {args.figures}/")
    return 0


def cmd_sweep(args) -> int:
    from simkv.studies.sweep import run_sweep_file
    start = time.perf_counter()
    path = Path(args.sweep)
    out = Path(args.output) if args.output else _default_output(path.stem, args.sweep, "file name")
    from simkv.files.safe_paths import check_root
    check_root(out)
    if args.address and args.executor != "ray":
        raise SimkvError("--address is the address of a Ray cluster", field="--address", fix="add --executor ray")
    rows, drew = run_sweep_file(path, out, workers=args.workers, executor=args.executor, address=args.address,
                                progress=lambda d, n: print(f"  {d}/{n} points", file=sys.stderr)
                                if d % 10 == 0 or d == n else None)
    failed = [r for r in rows if r["error"]]
    print(f"{len(rows)} point(s) ({sum(r['cached'] for r in rows)} cached) in {time.perf_counter() - start:.2f} s -> {out}/points.csv"
          + (", curves.png, report.md" if drew else ""))
    for r in failed:
        print(f"  failed: {r['key']} {r['error']}", file=sys.stderr)
    return 0


def cmd_capacity(args) -> int:
    from simkv.studies.capacity import check_number, check_variant, find_capacity, parse_slo
    from simkv.studies.fleet_capacity import parse_prices
    from simkv.files.scenario_file import load_scenario
    from simkv.simulate import simulate

    # the command line first: a typo must not wait for a scenario to load
    check_number(args.tolerance, "--tolerance", high=1.0, what="a fraction between 0 and 1, e.g. 0.02")
    if args.seeds < 1:
        raise SimkvError(f"{args.seeds} seeds", field="--seeds", fix="give 1 or more request streams (default 3)")
    if args.max_probes < 2:
        raise SimkvError(f"{args.max_probes} probes", field="--max-probes", fix="give at least 2 (default 40)")
    check_number(args.target_rate, "--target-rate", what="a positive rate in requests/s")
    check_number(args.tokens_per_day, "--tokens-per-day", what="a positive number of tokens a day")
    check_number(args.max_rate, "--max-rate", what="a positive rate in requests/s")
    prices = parse_prices(args.price)
    if args.max_replicas < 1:
        raise SimkvError(f"{args.max_replicas} replicas", field="--max-replicas", fix="give 1 or more (default 256)")
    slo = parse_slo(args.slo)
    scenario = load_scenario(args.scenario, args.overrides)
    check_variant(scenario, args.variant)
    if scenario.fleet is not None and (args.target_rate is not None or args.tokens_per_day is not None):
        return fleet_capacity(args, scenario, slo, prices)
    if args.tokens_per_day is not None:
        raise SimkvError("--tokens-per-day sizes a fleet; the scenario has no fleet: section", field="--tokens-per-day",
                         fix="add fleet.pools to the scenario, or give --target-rate in requests/s")
    if isinstance(prices, dict):
        gpu = scenario.hardware.gpu if isinstance(scenario.hardware.gpu, str) else None
        if gpu not in prices:
            raise SimkvError(f"no price for GPU type {gpu or 'custom'}", field="--price",
                             fix=f"give one number, or {gpu or 'the GPU'}=PRICE")
        prices = prices[gpu]
    res = find_capacity(scenario, slo, simulate_fn=lambda sc, v: simulate(sc, v), variant=args.variant,
                        tolerance=args.tolerance, target_rate=args.target_rate, price_per_gpu_hour=prices,
                        seeds=args.seeds, max_rate=args.max_rate, max_probes=args.max_probes)
    interval = None
    if args.intervals < 0 or args.intervals > 1000:
        raise SimkvError(f"{args.intervals} replicates", field="--intervals", fix="give 0 (off) to 1000")
    if args.intervals:
        from simkv.simulate import build_simulation, run_simulation, stream_for
        from simkv.studies.capacity_interval import capacity_interval
        interval = capacity_interval(scenario, slo, args.intervals, variant=args.variant, stream_for=stream_for,
                                     build=build_simulation, run_simulation=run_simulation, tolerance=args.tolerance,
                                     max_probes=args.max_probes, max_rate=args.max_rate)
    if args.json:
        print(json.dumps({"scenario": scenario.name, "variant": args.variant, "slo_s": {f"{m}_{p}": v for (m, p), v in slo.items()},
                          **res.to_dict(), **({"interval": interval} if interval else {})}, indent=2))
        return 0
    for p in res.probes:
        worst = ", ".join(f"{k} {v:.3g}/{t:.3g} s" for k, (v, t) in p.worst.items() if v is not None)
        refused = f", {p.refused} refused" if p.refused else ""
        verdict = ("meets" + (f" on all {args.seeds} seeds" if args.seeds > 1 else "") if p.meets
                   else "misses" + (f" on seed {p.seed}" if args.seeds > 1 else ""))
        print(f"  rate {p.rate:8.3f} req/s: {verdict}  ({worst}{refused})")
    k, n = res.seeds_meeting
    print(f"capacity: {'at least ' if res.failing_rate is None else ''}{res.capacity_rate:.3f} req/s per replica, "
          f"holds on {k} of {n} seed(s)" + ("" if k == n else " -- NOT on every request stream searched"))
    if res.stopped:
        print(f"  search stopped: {res.stopped}")
    print(f"  {res.output_tokens_per_s:,.0f} output tok/s at capacity; "
          + (f"{res.failing_rate:.3f} req/s misses; " if res.failing_rate is not None else "no rate that misses was found; ")
          + f"+10% ({res.check_rate:.3f}) meets on {res.seeds_meeting_check[0]} of {res.seeds_meeting_check[1]} seed(s)")
    if res.unservable_requests:
        reasons = "; ".join(f"{c} {reason}" for reason, c in res.unservable.items())
        print(f"  unservable: {res.unservable_requests} of {res.total_requests} requests at capacity ({reasons}): "
              f"{res.unservable_treatment}")
    if interval is not None:
        print(f"  range over {interval['replicates']} replicates (own seed, step costs x held-out errors): "
              f"p5 {interval['p5']:.3f}, p50 {interval['p50']:.3f}, p95 {interval['p95']:.3f} req/s "
              f"(min {interval['min']:.3f}, max {interval['max']:.3f}); residuals: {interval['residuals']}")
    if res.gpus_for_target is not None:
        print(f"GPUs for {args.target_rate:g} req/s: {res.gpus_for_target} ({res.gpus_per_replica} per replica)")
    if res.cost_per_million_tokens is not None:
        print(f"cost: ${res.cost_per_million_tokens:.3f} per million generated tokens at ${prices:g}/GPU-hour")
    return 0


def fleet_capacity(args, scenario, slo, prices) -> int:
    """`simkv capacity` on a fleet at a target load: the fewest replicas per pool, and the price."""
    from simkv.simulate import simulate, stream_for
    from simkv.studies.fleet_capacity import find_fleet_capacity
    res = find_fleet_capacity(scenario, slo, simulate_fn=simulate, stream_fn=stream_for, variant=args.variant,
                              target_rate=args.target_rate, tokens_per_day=args.tokens_per_day, prices=prices,
                              input_weight=args.input_weight, seeds=args.seeds, max_replicas=args.max_replicas,
                              max_probes=max(args.max_probes, 60))
    if args.json:
        print(json.dumps({"scenario": scenario.name, "variant": args.variant,
                          "slo_s": {f"{m}_{p}": v for (m, p), v in slo.items()}, **res.to_dict()}, indent=2))
        return 0
    for p in res.probes:
        worst = ", ".join(f"{k} {v:.3g}/{t:.3g} s" for k, (v, t) in p.worst.items() if v is not None)
        refused = f", {p.refused} refused" if p.refused else ""
        mix = " ".join(f"{n}={c}" for n, c in p.replicas.items())
        print(f"  {mix}: {'meets' if p.meets else 'misses on seed ' + str(p.seed)}  ({worst}{refused})")
    load = (f"{res.target_tokens_per_day:,.0f} tokens/day = " if res.target_tokens_per_day else "") + f"{res.target_rate:.3f} req/s"
    print(f"fleet for {load} ({res.input_tokens_per_s:,.0f} input + {res.output_tokens_per_s:,.0f} output tok/s): "
          + ", ".join(f"{n} {c} x {res.gpu_types[n]} ({res.gpus[n]} GPUs)" for n, c in res.replicas.items())
          + f"; {res.total_gpus} GPUs; meets on {res.seeds} seed(s): {'yes' if res.meets else 'NO'}")
    fewer = "; ".join(f"{n}: {'meets (not minimal)' if v else 'misses'}" for n, v in res.one_fewer.items() if v is not None)
    if fewer:
        print(f"  one replica fewer: {fewer}")
    if res.stopped:
        print(f"  search stopped: {res.stopped}")
    if res.price:
        pr = res.price
        print(f"price: ${pr['usd_per_hour']:,.2f}/hour, ${pr['usd_per_month']:,.0f}/month; "
              f"${pr['usd_per_million_input_tokens']:.4f} per million input tokens, "
              f"${pr['usd_per_million_output_tokens']:.4f} per million output tokens (input weight {pr['input_weight']:g})")
    return 0


def cmd_validate(args) -> int:
    from simkv.files.scenario_file import load_scenario
    from simkv.gpu.validate import torch_or_error, validate
    device = "cuda" if args.gpu else (args.device or "cpu")
    for name in ("layers", "requests"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SimkvError(f"{getattr(args, name)} {name}", field=f"--{name}", fix="give 1 or more")
    scenario = load_scenario(args.scenario, args.overrides)
    from simkv.gpu.validate import choose_variant
    choose_variant(scenario, args.variant)
    torch_or_error()
    out = Path(args.output) if args.output else _default_output(f"validate-{scenario.name}", args.scenario, "name")
    from simkv.files.safe_paths import check_root
    check_root(out)
    start = time.perf_counter()
    result = validate(scenario, device, args.layers, args.requests, args.variant, shapes=args.shapes)
    from simkv.gpu.report import write_validation
    write_validation(result, out)
    s = result.summary
    print(f"{s['steps']} steps of {s['requests']} requests on {s['device_name']} ({s['dtype']}) in "
          f"{time.perf_counter() - start:.1f} s; outputs paged == contiguous: {s['outputs_identical_paged_vs_contiguous']}")
    for kind, e in s["step_time_error"].items():
        print(f"  {kind}: step time |predicted - measured| / measured: median {100 * e['median_abs']:.1f}%, "
              f"p90 {100 * e['p90_abs']:.1f}%")
    print(f"results: {out}/ (report.md, summary.json, steps.csv, validation.png)")
    return 0


def cmd_calibrate(args) -> int:
    from simkv.gpu.calibrate import calibrate, compare_tables
    device = args.device or "cuda"
    out = Path(args.output)
    start = time.perf_counter()
    models = [m.strip() for m in args.models.split(",")] if args.models else None
    calibrate(out, device, models, args.quick, args.reference, args.name,
              log=lambda text: print(f"  {text}", file=sys.stderr, flush=True), shapes_kind=args.shapes)
    info = json.loads((out / "device.json").read_text())
    print(f"measured {info['name']} in {time.perf_counter() - start:.0f} s -> {out}/ (4 tables, device.json, gpu.yaml)")
    print(f"  copy {info['d2d_copy_GBps_read_plus_write']:,.0f} GB/s (read+write), bf16 matmul "
          f"{info['bf16_matmul_8192_TFLOPs']:,.1f} TFLOP/s, host->device {info['h2d_pinned_GBps']:,.1f} GB/s")
    comparison = compare_tables(out, args.reference)
    (out / f"compare-{args.reference}.json").write_text(json.dumps(comparison, indent=2) + "\n")
    for table, c in comparison.items():
        if c["rows"]:
            print(f"  vs {args.reference} {table}: {c['rows']} shared shapes, |ratio - 1| median "
                  f"{100 * c['median_abs']:.1f}%, p90 {100 * c['p90_abs']:.1f}% (signed median {100 * c['median_signed']:+.1f}%)")
    return 0


def cmd_reproduce(args) -> int:
    from simkv.studies.reproduce import MANIFEST, reproduce
    if args.list:
        for job in MANIFEST:
            print(f"{job.name:34s} {job.source or job.kind:52s} {', '.join(job.targets())}")
        return 0
    root = Path.cwd()
    if not (root / "scenarios").is_dir():
        raise SimkvError("run `simkv reproduce` from the repository root (it reads scenarios/)", field="working directory",
                         fix="cd to the simkv checkout")
    start = time.perf_counter()
    log = lambda text: print(f"  {text}", file=sys.stderr)
    if args.check:
        import tempfile
        with tempfile.TemporaryDirectory(prefix="simkv-check-") as tmp:
            written = reproduce(root, Path(tmp), args.only, log=log)
            changed = [p.relative_to(tmp) for p in written
                       if not (Path(args.output) / p.relative_to(tmp)).is_file()
                       or (Path(args.output) / p.relative_to(tmp)).read_bytes() != p.read_bytes()]
        for p in changed:
            print(f"  differs: {args.output}/{p}")
        print(f"{len(written) - len(changed)} of {len(written)} file(s) identical to {args.output}/ "
              f"({time.perf_counter() - start:.0f} s)")
        return 1 if changed else 0
    written = reproduce(root, Path(args.output), args.only, log=log)
    print(f"wrote {len(written)} file(s) under {args.output}/ in {time.perf_counter() - start:.0f} s")
    return 0


def cmd_plot(args) -> int:
    from simkv.files.results import redraw
    folder = Path(args.folder)
    names = redraw(folder)
    print(f"redrew {', '.join(names)} in {folder}/")
    return 0


def cmd_trace_stats(args) -> int:
    from pydantic import ValidationError

    from simkv.scenario import TraceSpec
    from simkv.files.traces import BUILTIN, read_trace, trace_stats
    try:
        if args.trace in BUILTIN:
            spec = TraceSpec(name=args.trace)
        else:
            spec = TraceSpec(path=args.trace, format=args.format, time_unit=args.time_unit,
                             columns={"arrival": args.arrival, "prompt": args.prompt, "output": args.output})
    except ValidationError:
        raise SimkvError("give the file's columns", file=args.trace,
                         fix="--prompt COLUMN --output COLUMN [--arrival COLUMN --time-unit s|ms|us|datetime]") from None
    stats = trace_stats(read_trace(spec, Path.cwd()))
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"{stats['trace']}: {stats['requests']:,} requests")
    if "span_s" in stats:
        cv = stats["interarrival_cv"]
        print(f"  span {stats['span_s']:,.1f} s, mean rate {stats['mean_rate_per_s']:.2f} req/s, "
              f"inter-arrival CV {cv:.2f}" if cv is not None else "")
    for key in ("prompt_tokens", "output_tokens"):
        d = stats[key]
        print(f"  {key.split('_')[0]:6s} tokens mean {d['mean']:,.1f} / p50 {d['p50']:,.1f} / p99 {d['p99']:,.1f} / "
              f"max {d['max']:,} (min {d['min']:,}); lognormal mu {d['lognormal_mu']:.3f}, sigma {d['lognormal_sigma']:.3f}")
    return 0


def cmd_schema(args) -> int:
    from simkv.scenario import Scenario
    print(json.dumps(Scenario.model_json_schema(), indent=2))
    return 0


def cmd_catalog(args) -> int:
    from simkv.catalog import builtin_gpus, builtin_models
    if args.presets:
        from simkv.presets import PRESETS
        for name, preset in PRESETS.items():
            knobs = ", ".join(f"{k}={v}" for k, v in preset["defaults"].items())
            print(f"{name}\n  defaults: {knobs}\n  source: {preset['source']}")
        return 0
    models, gpus = builtin_models(), builtin_gpus()
    if args.json:
        print(json.dumps({"models": {k: v.model_dump() for k, v in models.items()},
                          "gpus": {k: v.model_dump() for k, v in gpus.items()}}, indent=2))
        return 0
    print("Models (layers, hidden, heads/kv heads x head dim, intermediate, vocab, params, max context, KV bytes/token bf16):")
    for name, m in models.items():
        print(f"  {name:12s} {m.num_layers:3d}  {m.hidden_size:5d}  {m.num_heads:3d}/{m.num_kv_heads:<3d}x{m.head_dim}  "
              f"{m.intermediate_size:6d}  {m.vocab_size:6d}  {m.num_params / 1e9:6.2f}B  {m.max_position_embeddings:6d}  "
              f"{m.kv_bytes_per_token('bf16', 1):7,d}")
    print("\nGPUs (memory GiB, HBM GB/s, dense bf16 TFLOP/s, host link GB/s; measured ceilings where known):")
    for name, g in gpus.items():
        meas = (f"  measured: copy {g.measured.copy_gbps:,.0f} GB/s, matmul {g.measured.bf16_matmul_tflops:.0f} TFLOP/s"
                if g.measured else "  (datasheet only)")
        print(f"  {name:10s} {g.memory_gib:7.2f}  {g.hbm_bandwidth_gbps:6,.0f}  {g.bf16_tflops:6.1f}  {g.host_link_gbps:4.0f}{meas}")
    print("\nSources: simkv/catalog/models.yaml and gpus.yaml (each entry names its source). "
          "Add your own under `models:`/`gpus:` in a scenario or in a file listed in `catalog_files:`.")
    return 0


def cmd_fit_host_overhead(args) -> int:
    from simkv.files.host_log import fit_file
    fit = fit_file(args.steplog)
    if args.json:
        print(json.dumps({"host_overhead_s": fit.fixed_s, "host_per_seq_s": fit.per_seq_s, "steps": fit.rows,
                          "r2": fit.r2, "median_rel_error": fit.rel_err_median}))
        return 0
    print(f"host overhead: {fit.describe()}")
    print("scenario:\n  engine:\n"
          f"    host_overhead_s: {fit.fixed_s:.6g}\n    host_per_seq_s: {fit.per_seq_s:.6g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


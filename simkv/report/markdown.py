"""The readable report (Markdown) and the terminal summary table, from Results."""

from __future__ import annotations

from simkv.result import Result
from simkv.metrics.summary import Summary


def _ms(v) -> str:
    return "–" if v is None else f"{v * 1e3:.1f}"


def _s(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _inf_s(v) -> str:
    """A latency of the offered view: None there means it falls on a refused request."""
    return "∞" if v is None else f"{v:.2f}"


def _offered_line(name: str, served: dict, offered: dict | None) -> str | None:
    """Served and offered (refused = ∞) percentiles side by side, when they differ."""
    if not offered or not offered.get("refused"):
        return None
    parts = [f"{label} p50 / p99 {_s(served[key]['p50'])} / {_s(served[key]['p99'])} s served, "
             f"{_inf_s(offered[key]['p50'])} / {_inf_s(offered[key]['p99'])} s offered"
             for key, label in (("ttft", "TTFT"), ("e2e", "E2E"))]
    return (f"- {name}: {offered['refused']} of {offered['requests']} offered request(s) refused (counted as ∞ in "
            f"the offered view): " + "; ".join(parts) + ".")


def _slo_line(name: str, slo: dict) -> str:
    line = f"- {name}: SLO {slo['targets']} met by {_pct(slo['attainment'])} of offered requests"
    if "offered" in slo:
        line += (f" ({slo['met']} of {slo['offered']}; {slo['refused']} refused = missed, {slo['unservable']} "
                 f"unservable excluded; {_pct(slo['attainment_served'])} of served requests)")
    return line + f"; goodput {slo['goodput_requests_per_s']:.2f} req/s."


COLUMNS = (
    ("variant", lambda n, s: n),
    ("req/s", lambda n, s: f"{s['throughput']['requests_per_s']:.2f}"),
    ("out tok/s", lambda n, s: f"{s['throughput']['output_tokens_per_s']:.0f}"),
    ("TTFT p50 s", lambda n, s: _s(s["latency_s"]["ttft"]["p50"])),
    ("TTFT p99 s", lambda n, s: _s(s["latency_s"]["ttft"]["p99"])),
    ("TPOT p50 ms", lambda n, s: _ms(s["latency_s"]["tpot"]["p50"])),
    ("TBT p99 ms", lambda n, s: _ms(s["latency_s"]["tbt"]["p99"])),
    ("E2E p99 s", lambda n, s: _s(s["latency_s"]["e2e"]["p99"])),
    ("KV util", lambda n, s: _pct(s["kv_cache"]["utilization_mean"])),
    ("reserved", lambda n, s: _pct(s["kv_cache"]["mean_fraction"]["reserved"])),
    ("int frag", lambda n, s: _pct(s["kv_cache"]["mean_fraction"]["internal_frag"])),
    ("ext frag", lambda n, s: _pct(s["kv_cache"]["mean_fraction"]["external_frag"])),
    ("batch mean/max", lambda n, s: f"{s['batch']['mean_running']:.1f}/{s['batch']['max_running']}"),
    ("preempt", lambda n, s: str(s["requests"]["preemptions"])),
    ("rejected", lambda n, s: str(s["requests"]["rejected"])),
)


def table_rows(results: dict[str, Result]) -> tuple[list[str], list[list[str]]]:
    header = [c for c, _ in COLUMNS]
    rows = [[f(name, r.summary) for _, f in COLUMNS] for name, r in results.items()]
    return header, rows


def terminal_table(results: dict[str, Result]) -> str:
    """A compact fixed-width table, one row per variant."""
    header, rows = table_rows(results)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def markdown_table(results: dict[str, Result]) -> str:
    header, rows = table_rows(results)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def markdown_report(results: dict[str, Result], figures: list[str]) -> str:
    """report.md: what was simulated, the comparison table, memory plan, figures, definitions."""
    first = next(iter(results.values()))
    sc, s = first.scenario, first.summary
    setup, mem = s["setup"], s["setup"]["memory"]
    wl = sc.workload if sc is not None else None
    lines = [f"# simkv report: {s['scenario']}", ""]
    if sc is not None and sc.description:
        lines += [sc.description, ""]
    lines += ["## What was simulated", "",
              f"- Model **{setup['model']}** on **{setup['gpu']}** × {setup['tensor_parallel']} (tensor parallel), "
              f"step times from the **{setup['cost_model']}** cost model.",
              f"- KV cache per GPU: {mem['kv_cache_gib']:.2f} GiB = **{mem['capacity_tokens']:,} token slots** "
              f"({mem['num_blocks']:,} blocks of {mem['block_size']}); budget {mem['gpu_budget_gib']:.2f} GiB, "
              f"weights {mem['weights_gib']:.2f} GiB, activations {mem['activation_reserve_gib']:.2f} GiB, "
              f"{mem['kv_bytes_per_token']:,} bytes per token.",
              f"- Limits: max_num_seqs {setup['max_num_seqs']}, max_num_batched_tokens {setup['max_num_batched_tokens']}, "
              f"max_model_len {setup['max_model_len']}."]
    if "engine" in setup:
        lines.append("- Engine as run (preset applied, defaults resolved): "
                     + ", ".join(f"`{k}={v}`" for k, v in setup["engine"].items()) + ".")
    if "cost_sources" in setup:
        lines.append("- Where the step-time numbers come from (measured / fitted / roofline / assumed):")
        lines += [f"  - {k}: {v}" for k, v in setup["cost_sources"].items()]
    if wl is not None and wl.classes:
        for c in wl.classes:
            lines.append(f"- Class **{c.name}**: {_describe(c.arrival)} arrivals; prompts {_describe(c.prompt_tokens)} "
                         f"tokens; outputs {_describe(c.output_tokens)} tokens.")
    elif wl is not None and wl.trace is not None:
        tr = wl.trace
        arrivals = f"{_describe(wl.arrival)} arrivals with lengths resampled from" if wl.arrival else "replay of"
        lines.append(f"- Workload: {arrivals} the trace `{tr.name or tr.path}` (speed {tr.speed:g}x, sample "
                     f"{tr.sample:g}{', window ' + str(list(tr.window_s)) + ' s' if tr.window_s else ''}); "
                     f"max_new_tokens {_describe(wl.max_new_tokens)}.")
    elif wl is not None:
        lines.append(f"- Workload: {_describe(wl.arrival)} arrivals; prompts {_describe(wl.prompt_tokens)} tokens; "
                     f"outputs {_describe(wl.output_tokens)} tokens; max_new_tokens {_describe(wl.max_new_tokens)}.")
        lines.append(f"- Run: seed {sc.run.seed}, {s['requests']['total']:,} requests, measured window "
                     f"{s['throughput']['measured_window_s'][0]:.1f}–{s['throughput']['measured_window_s'][1]:.1f} s "
                     f"(requests arriving in the warm-up are excluded).")
    if len(results) > 1:
        lines.append("- Variants (same request stream): " + "; ".join(
            f"**{n}**: " + (", ".join(f"`{k}={v}`" for k, v in r.summary.get("overrides", {}).items()) or "no overrides")
            for n, r in results.items()))
    lines += ["", "## Results", "", markdown_table(results), "",
              "KV columns are time-averaged fractions of capacity over the measured window; "
              "`KV util` = token states / capacity.", ""]
    for name, r in results.items():
        req = r.summary["requests"]
        if req["rejected"]:
            lines.append(f"- {name}: {req['rejected']} request(s) rejected: {req['rejected_by_reason']}.")
        if req.get("unservable"):
            lines.append(f"- {name}: {sum(req['unservable'].values())} request(s) arriving in the window no engine of "
                         f"this configuration could serve (left out of SLO attainment): {req['unservable']}.")
        offered = _offered_line(name, r.summary["latency_s"], r.summary.get("latency_s_offered"))
        if offered:
            lines.append(offered)
        trunc = r.summary["workload_effects"]["outputs_truncated_at_max_model_len"]
        if trunc:
            lines.append(f"- {name}: {trunc} output(s) stopped at max_model_len.")
        pc = r.summary["kv_cache"].get("prefix_cache")
        if pc:
            block = f", {_pct(pc['block_hit_rate'])} of blocks" if pc.get("block_hit_rate") is not None else ""
            lines.append(f"- {name}: prefix cache hit {_pct(pc['hit_rate'])} of prompt tokens{block} "
                         f"({pc['hit_tokens']:,} of {pc['query_tokens']:,} tokens).")
        if "slo" in r.summary:
            lines.append(_slo_line(name, r.summary["slo"]))
    for name, r in results.items():
        if "classes" in r.summary:
            lines += ["", f"Per request class ({name}):", "",
                      "| class | requests | refused | req/s | TTFT p50 / p99 s | TPOT p50 ms | E2E p50 / p99 s | "
                      "offered TTFT / E2E p99 s | SLO met (offered) |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for cname, c in r.summary["classes"].items():
                lat = c["latency_s"]
                met = _pct(c["slo"]["attainment"]) if "slo" in c else "–"
                off = c.get("latency_s_offered")
                offered = f"{_inf_s(off['ttft']['p99'])} / {_inf_s(off['e2e']['p99'])}" if off and off["refused"] else "same"
                lines.append(f"| {cname} | {c['requests']} | {c.get('refused_in_window', '–')} | {c['requests_per_s']:.2f} | "
                             f"{_s(lat['ttft']['p50'])} / "
                             f"{_s(lat['ttft']['p99'])} | {_ms(lat['tpot']['p50'])} | {_s(lat['e2e']['p50'])} / "
                             f"{_s(lat['e2e']['p99'])} | {offered} | {met} |")
    for name, r in results.items():
        if r.summary.get("intervals"):
            from simkv.studies.intervals import markdown_intervals
            lines += markdown_intervals(name, r.summary)
    lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    lines += ["", "## Definitions", "",
              "- TTFT = first token − arrival; TPOT = (E2E − TTFT) / (output tokens − 1); TBT = every gap between "
              "consecutive tokens of a request (stalls included), pooled; E2E = finish − arrival.",
              "- Latency percentiles in the table are over served requests (finished, arrived after warm-up). The "
              "offered view also counts every request the engine refused (queue full, or a conversation ended by an "
              "earlier turn that could not run) as infinitely late (∞). SLO attainment and goodput are over offered "
              "requests (arrived in the measured window; refused = missed); requests no engine of this configuration "
              "could serve (prompt over max_model_len, reservation larger than the KV cache, prompt over the prefill "
              "budget) are reported by cause and left out.",
              "- KV breakdown (vLLM paper, Fig. 2): token states (slots holding a key/value), reserved (held for "
              "tokens still to come), internal fragmentation (held, never filled), external fragmentation (free slots "
              "in holes too small for the next waiting request; with nobody waiting, free slots outside the largest "
              "free extent), free.", ""]
    return "\n".join(lines)


def _describe(spec) -> str:
    """`exponential (mean 1000, max 6144)` from a tagged spec."""
    data = spec.model_dump(exclude_none=True)
    kind = data.pop("process", None) or data.pop("dist", None) or data.pop("policy", None)
    if data.get("min") == 1:
        data.pop("min")
    return f"{kind} ({', '.join(f'{k} {v:g}' if isinstance(v, float) else f'{k} {v}' for k, v in data.items())})" if data else kind


def sweep_report(field: str, rows: list[dict], summary: Summary, description: str, figure: str) -> str:
    """report.md of a sweep: what was simulated (from one point's summary), then each curve's
    metrics at every value (rows: flat metrics with 'value', 'variant' and 'overrides')."""
    setup = summary["setup"]
    lines = [f"# simkv sweep report: {summary['scenario']}", ""]
    if description:
        lines += [description, ""]
    values = list(dict.fromkeys(r["value"] for r in rows))
    firsts: dict[str, dict] = {}
    for r in rows:
        firsts.setdefault(r["variant"], r)
    lines += [f"- Model **{setup['model']}** on **{setup['gpu']}** × {setup['tensor_parallel']}, step times "
              f"from the {setup['cost_model']} cost model; swept `{field}` over {', '.join(str(v) for v in values)}.",
              "- Curves (the same request stream at each value): " + "; ".join(
                  f"**{n}**: " + (", ".join(f"`{k}={v}`" for k, v in r["overrides"].items()) or "no overrides")
                  for n, r in firsts.items()), "",
              f"![sweep]({figure})", ""]
    head = ("| " + field + " | req/s | out tok/s | TTFT p50 / p99 s | TBT p50 / p99 ms | E2E p50 / p99 s | "
            "E2E p99/p50 | KV util | peak running | preempt | rejected |")
    for name in dict.fromkeys(r["variant"] for r in rows):
        lines += [f"### {name}", "", head, "|" + "---|" * 11]
        for r in (r for r in rows if r["variant"] == name):
            spread = (r["e2e_p99_s"] / r["e2e_p50_s"]) if r["e2e_p50_s"] else None
            lines.append(f"| {r['value']} | {r['requests_per_s']:.2f} | {r['output_tokens_per_s']:.0f} | "
                         f"{_s(r['ttft_p50_s'])} / {_s(r['ttft_p99_s'])} | {_ms(r['tbt_p50_s'])} / {_ms(r['tbt_p99_s'])} | "
                         f"{_s(r['e2e_p50_s'])} / {_s(r['e2e_p99_s'])} | {'–' if spread is None else f'{spread:.1f}'} | "
                         f"{_pct(r['kv_token_mean'])} | {r['max_running']} | {r['preemptions']} | {r['rejected']} |")
        lines.append("")
    return "\n".join(lines)

"""Writing a results folder: per-run files, the comparison table, figures and report.md.

Layout: a single run writes summary.json, requests.csv, timeseries.csv, scenario.json, the
figures and report.md into the folder. With variants each variant gets a sub-folder with its
files, and the folder holds summary.json (variant -> summary), comparison.csv, overlaid
figures and report.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt

from simkv.plots import FIGURES
from simkv.report import markdown_report, table_rows
from simkv.result import Result


def write_results(results: dict[str, Result], folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if len(results) == 1:
        next(iter(results.values())).save(folder)
    else:
        for name, res in results.items():
            res.save(folder / _safe(name))
        summaries = {name: res.summary for name, res in results.items()}
        (folder / "summary.json").write_text(json.dumps(summaries, indent=2) + "\n")
        header, rows = table_rows(results)
        (folder / "comparison.csv").write_text("\n".join(",".join(r) for r in [header] + rows) + "\n")
    figures = write_figures(results, folder)
    (folder / "report.md").write_text(markdown_report(results, figures))
    return folder


def write_figures(results: dict[str, Result], folder: Path) -> list[str]:
    names = []
    for filename, make in FIGURES.items():
        if filename == "kv_breakdown_mean.png" and len(results) == 1:
            continue
        fig = make(results)
        fig.savefig(folder / filename, dpi=110)
        plt.close(fig)
        names.append(filename)
    return names


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

"""Successive halving's rungs (hydra/sweeper=halving), as sweep.json records them: a figure of the
ranking metric against epochs for every configuration, the survivors of each rung drawn over the
stopped ones, the rung epochs marked; and a ranking that knows how far each configuration ran.

A configuration stopped at rung 0 after 1 epoch cannot be compared with the picked one at its last
epoch: configurations are ranked by the rung they reached first, then by the metric at that rung's
epoch, which is the comparison the sweep itself made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis.discovery import read_sweep_jobs
from analysis.records import read_object
from analysis.tables import markdown_table


@dataclass
class Halving:
    """One halving sweep: its sweep dir, its sweep.json `halving` record, each job's run name."""

    sweep_dir: Path
    record: dict
    runs: dict[int, str]  # job num -> the run's name in Sweep.runs and Sweep.curves

    @property
    def metric(self) -> str:
        return self.record["metric"]

    @property
    def picked(self) -> int | None:
        rungs = self.record.get("rungs") or []
        return rungs[-1].get("picked") if rungs else None


def found(runs: pd.DataFrame) -> Halving | None:
    """The halving sweep the runs come from, when they come from one sweep dir whose sweep.json
    has rungs; None otherwise (a plain grid, several sweeps combined, a run alone)."""
    if "sweep_dir" not in runs or runs.empty:
        return None
    dirs = runs["sweep_dir"].dropna().unique()
    if len(dirs) != 1:
        return None
    sweep_dir = Path(dirs[0])
    data = read_object(sweep_dir / "sweep.json")[0] or {}
    record = data.get("halving")
    if not isinstance(record, dict) or not record.get("rungs") or not isinstance(record.get("metric"), str):
        return None
    by_dir = {Path(d).resolve(): run for d, run in zip(runs["run_dir"], runs["run"], strict=True)}
    jobs = {}
    for job in read_sweep_jobs(sweep_dir):
        run = by_dir.get((sweep_dir / str(job.get("dir"))).resolve())
        if run is not None:
            jobs[job.get("num")] = run
    return Halving(sweep_dir, record, jobs)


def ranking(halving: Halving, runs: pd.DataFrame | None = None, keys: list[str] = ()) -> pd.DataFrame:
    """One row per configuration: the last rung it reached, that rung's epoch, its metric there,
    whether it was promoted past it (or picked), in rank order: further rungs first, then the
    metric, ties to the lower job number."""
    reached: dict[int, tuple[int, int, float | None]] = {}
    for i, rung in enumerate(halving.record["rungs"]):
        for num, value in zip(rung["jobs"], rung.get("values") or [None] * len(rung["jobs"]), strict=True):
            reached[num] = (i, rung["epoch"], value)
    sign = -1 if halving.record.get("mode") == "max" else 1
    rows, rungs = [], halving.record["rungs"]
    for num, (rung, epoch, value) in reached.items():
        outcome = "out of the race" if value is None else f"stopped at rung {rung}"
        if value is not None and rung == len(rungs) - 1:
            outcome = "finished, not picked"  # the last rung trains to the end: nothing stopped it
        outcome = "picked" if num == halving.picked else outcome
        if rung < len(rungs) - 1 and num in rungs[rung].get("promoted", []):
            outcome = "promoted, not finished"  # an interrupted sweep: the next rung has no values yet
        rows.append({"job": num, "run": halving.runs.get(num), "rung": rung, "epoch": epoch,
                     halving.metric: value, "outcome": outcome})  # fmt: skip
    metric = halving.metric
    rows.sort(key=lambda r: (-r["rung"], math.inf if r[metric] is None else sign * r[metric], r["job"]))
    table = pd.DataFrame(rows, columns=["job", "run", "rung", "epoch", halving.metric, "outcome"])
    table.insert(0, "rank", range(1, len(table) + 1))
    if runs is not None and keys:  # each configuration's varied knobs, from Sweep.runs
        table = table.merge(runs[["run", *keys]], on="run", how="left")
    return table


def caption(halving: Halving) -> str:
    record = halving.record
    sizes = ", ".join(f"{len(r['jobs'])} to epoch {r['epoch']}" for r in record["rungs"])
    picked = f"; picked: job {halving.picked} (run {halving.runs.get(halving.picked)})"
    picked = picked if halving.picked is not None else ""
    return (
        f"Successive halving (eta={record.get('eta')}): {record['metric']} against epochs for every "
        f"configuration; dashed lines: the rungs ({sizes}), at each of which the best 1/eta went on. "
        f"Bold: the configurations promoted past rung 0; grey: those stopped at it{picked}."
    )


def plot_rungs(halving: Halving, curves: pd.DataFrame) -> Figure:
    """The metric against epochs per configuration, survivors highlighted, rung epochs marked."""
    from analysis import plots

    metric = halving.metric
    if metric not in curves:
        raise plots.NothingToPlot(f"the runs' metrics lines have no {metric}")
    rungs = halving.record["rungs"]
    fig, axes = plots._new_figure(1, 1, 7.0, 4.5)
    ax = axes[0, 0]
    for rung in rungs:
        ax.axvline(rung["epoch"], color="0.6", linestyle="--", linewidth=0.8, zorder=0)
    reached = {num: i for i, rung in enumerate(rungs) for num in rung["jobs"]}
    colors = {}
    for num, rung in sorted(reached.items(), key=lambda item: item[1]):  # survivors drawn last, on top
        run = halving.runs.get(num)
        line = curves[curves["run"] == run].sort_values("epoch")
        if line.empty:
            continue
        if rung == 0:
            ax.plot(line["epoch"], line[metric], color="0.7", linewidth=0.9, marker="o", markersize=3)
            continue
        style = {"linewidth": 2.6 if num == halving.picked else 1.6, "marker": "o", "markersize": 3}
        (drawn,) = ax.plot(line["epoch"], line[metric], label=f"job {num} (rung {rung})", **style)
        colors[num] = drawn.get_color()
    for rung in rungs:  # each rung's survivors' values where the choice was made
        for num, value in zip(rung["jobs"], rung.get("values") or [], strict=False):
            if value is not None and num in colors:
                ax.plot([rung["epoch"]], [value], "o", color=colors[num], markersize=6, markeredgecolor="k")
    ax.set_xlabel("epoch")
    ax.set_ylabel(plots.metric_label(metric))
    ax.set_title(f"successive halving: {len(reached)} configurations, rungs at epochs "
                 f"{', '.join(str(r['epoch']) for r in rungs)}")  # fmt: skip
    if colors:
        ax.legend(fontsize="small", loc="best")
    return fig


def section(halving: Halving | None, runs: pd.DataFrame | None = None, keys: list[str] = ()) -> list[str]:
    """The report's markdown for the rungs: what each rung kept, and the ranking by rung reached."""
    if halving is None:
        return []
    lines = ["## Successive halving", ""]
    for i, rung in enumerate(halving.record["rungs"]):
        kept = rung.get("promoted")
        went = f"promoted {kept}" if kept is not None else "not finished"
        went = f"picked {rung.get('picked')}" if "picked" in rung else went
        lines.append(f"- rung {i}: {len(rung['jobs'])} configurations to epoch {rung['epoch']}; {went}")
    lines += ["", "Ranked by the rung reached, then by the metric at its epoch:", ""]
    lines += [markdown_table(ranking(halving, runs, keys)), ""]
    return lines

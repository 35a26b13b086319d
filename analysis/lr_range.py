"""The LR range test's reading (`python -m sweeper experiment=lr_range`, then `python -m analysis`
on its run dir): loss against lr from steps.jsonl, the suggested lr and its figure. The rule (RULE)
is fastai's lr_find and Lightning's LR finder's; SKIP_BEGIN and SKIP_END are Lightning's
skip_begin and skip_end (the average's start, and the last step).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import plots
from analysis.records import json_lines

STEPS_FILE = "steps.jsonl"
BETA = 0.98  # fastai's and Lightning's smoothing
DIVERGED = 4.0  # the curve ends where the smoothed loss exceeds this multiple of its minimum
SKIP_BEGIN, SKIP_END = 10, 1
RULE = (
    f"the steepest descent of the smoothed loss (exponential moving average, beta {BETA}, debiased) "
    f"against log(lr), before it first exceeds {DIVERGED:g}x its minimum, the first {SKIP_BEGIN} "
    f"steps and the last left out"
)


@dataclass
class Suggestion:
    lr: float | None  # None: too few steps before the loss blew up to tell
    index: int | None  # its row in the steps
    smoothed: np.ndarray  # the smoothed loss, one value per step (NaN where the loss was null)
    end: int  # steps [0, end) are the curve the rule reads (the rest is past the blow-up)
    why_none: str = ""


def _not_a_step(row: dict) -> str | None:
    good = (
        all(isinstance(row.get(k), (int, float)) for k in ("step", "step_lr"))
        and row["step_lr"] > 0
        and (row.get("loss") is None or isinstance(row["loss"], (int, float)))
    )
    return None if good else "not a step's record"


def read_steps(run_dir: str | Path) -> pd.DataFrame | None:
    """steps.jsonl as a frame (step, epoch, step_lr, loss; loss NaN where the run wrote null), or
    None when the run has none. A line cut short at the end (a crash mid-write) is dropped; a bad
    line elsewhere is dropped with a warning naming it."""
    path = Path(run_dir) / STEPS_FILE
    read = json_lines(path, _not_a_step)
    if read is None:
        return None
    lines, bad, _ = read
    for n, _why in bad:
        warnings.warn(f"damaged: {path}: line {n} is not a step's record, dropped", stacklevel=2)
    columns = ["step", "epoch", "step_lr", "loss"]
    frame = pd.DataFrame([{k: row.get(k) for k in columns} for row in lines], columns=columns)
    frame["loss"] = pd.to_numeric(frame["loss"], errors="coerce")
    return frame.sort_values("step", ignore_index=True)


def smooth(losses: np.ndarray, beta: float = BETA) -> np.ndarray:
    """fastai's smoothed loss: avg = beta*avg + (1-beta)*loss, divided by 1-beta**n (debiased).
    A NaN loss (diverged) makes it NaN from there on, as it does in the trainer's average."""
    out = np.empty(len(losses))
    avg = 0.0
    for n, value in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * value
        out[n - 1] = avg / (1 - beta**n)
    return out


def suggest(lrs, losses, beta: float = BETA) -> Suggestion:
    """The suggested lr for a range test's per-step `lrs` and `losses` (see the module's rule)."""
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    smoothed = smooth(losses, beta)
    end = len(smoothed)
    best = np.inf
    for i, value in enumerate(smoothed):
        if not np.isfinite(value) or value > DIVERGED * best:
            end = i
            break
        best = min(best, value)
    lo, hi = SKIP_BEGIN, end - SKIP_END
    if hi - lo < 3:
        why = f"only {end} steps before the loss blew up" if end < len(smoothed) else f"only {end} steps"
        return Suggestion(None, None, smoothed, end, f"{why}: too few to find a descent")
    slope = np.gradient(smoothed[lo:hi], np.log10(lrs[lo:hi]))
    index = lo + int(np.argmin(slope))
    if slope[index - lo] >= 0:
        return Suggestion(None, None, smoothed, end, "the smoothed loss never falls")
    return Suggestion(float(lrs[index]), index, smoothed, end)


def suggestions(runs: pd.DataFrame) -> list[tuple[str, pd.DataFrame, Suggestion]]:
    """(run, steps, suggestion) for each run of `runs` (a Sweep's runs table) with a steps.jsonl."""
    found = []
    for run, run_dir in zip(runs["run"], runs["run_dir"], strict=True):
        steps = read_steps(run_dir)
        if steps is not None and not steps.empty:
            found.append((str(run), steps, suggest(steps["step_lr"], steps["loss"])))
    return found


def describe(run: str, suggestion: Suggestion) -> str:
    """One line: the run's suggested lr, or why there is none."""
    if suggestion.lr is None:
        return f"run {run}: no suggested lr ({suggestion.why_none})"
    return f"run {run}: suggested lr {suggestion.lr:.3g}"


def plot_lr_range(found: list[tuple[str, pd.DataFrame, Suggestion]], title: str | None = None) -> Figure:
    """Loss against lr (log x): each step's loss (dots), the smoothed loss (line) up to where it
    blew up, and the suggested lr (a marker and a dashed line)."""
    if not found:
        raise plots.NothingToPlot(f"no run with a {STEPS_FILE}")
    fig, axes = plots._new_figure(1, 1, 7.0, 4.5)
    ax = axes[0, 0]
    tops, bottoms = [], []
    for k, (run, steps, s) in enumerate(found):
        color = f"C{k % 10}"
        label = run if len(found) > 1 else "loss"
        ax.plot(steps["step_lr"], steps["loss"], ".", color=color, alpha=0.3, markersize=3)
        kept = slice(0, max(s.end, 1))
        ax.plot(steps["step_lr"][kept], s.smoothed[kept], "-", color=color, label=f"{label} (smoothed)")
        if s.lr is not None:
            ax.axvline(s.lr, color=color, linestyle="--", linewidth=1)
            ax.plot([s.lr], [s.smoothed[s.index]], "o", color=color, markersize=8,
                    label=f"suggested lr {s.lr:.3g}")  # fmt: skip
        finite = s.smoothed[kept][np.isfinite(s.smoothed[kept])]
        raw = steps["loss"].to_numpy()[kept]
        raw = raw[np.isfinite(raw)]
        if len(finite):  # the raw losses run ahead of their (lagging) average: both in view
            tops.append(min(max(finite.max(), raw.max(initial=-np.inf)), DIVERGED * finite.min()))
            bottoms.append(min(finite.min(), raw.min(initial=np.inf)))
    ax.set_xscale("log")
    if tops:  # past the blow-up the loss is off the scale: the range the rule reads fills the panel
        low, high = min(bottoms), max(tops)
        pad = 0.1 * (high - low) or 0.1 * abs(high) or 0.1
        ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel("lr (the step's learning rate)")
    ax.set_ylabel("training loss (per step)")
    ax.legend(fontsize="small")
    plots._suptitle(fig, title or "LR range test")
    return fig

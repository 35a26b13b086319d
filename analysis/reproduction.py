"""Does the lecture reproduce? One report over the lecture's experiments, claim by claim.

    python -m analysis.reproduction ROOT [--out docs]

ROOT holds sweep dirs named after the experiments of conf/experiment/lecture_*.yaml
(`ROOT/lecture_lr`, `ROOT/lecture_lr2`, ...); any subset may be there. Writes OUT/reproduction.md
and one small PNG per claim in OUT/figures/. Each claim gets the command that produces its runs,
its figure, the numbers read from the run records, and a verdict computed from those numbers by
the rules written next to it:

    supported         every check passes
    partly supported  some checks pass (the failing ones are named)
    not supported     no check passes
    partial: N/E epochs   a run the claim needs has not finished (the checks shown are "so far")
    not run           none of the experiments that test the claim is under ROOT

Only the run records are read (docs/run-record.md), through analysis.load; the figures are
analysis.plots', the reducers analysis.diagnostics'.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import os
import shlex
import socket
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.diagnostics import (
    OVERFIT_GAP,
    UNDERFIT_TRAIN_ACC,
    capacity_verdict,
    fit_state,
    loss_acc_decoupling,
    rank_configs,
)
from analysis.load import (
    RECORD_KEEPING,
    MissingJob,
    NoRunsFound,
    Sweep,
    discover,
    format_value,
    is_missing,
    load_sweep,
    select_rows,
)
from analysis.losses import read_sample_losses

# The experiments, in the order the report lists them, with the claims they test.
EXPERIMENTS = {
    "lecture_baseline": "claims 1, 4, 5: the lecture's protocol (lr 0.1, 50 epochs), raw per-sample losses kept",
    "lecture_lr": "claim 2 (and 1, 4, 5 from its lr=0.1 run): lr in {0.2, 0.1, 0.01}",
    "lecture_lr2": "claim 3: lr 0.1 for 25 epochs, then lr2 in {0.07, 0.05, 0.02}",
    "lecture_test_loss": "claim 4: the lecture's protocol with three seeds",
    "lecture_distributions": "claim 5: the lecture's protocol, raw per-sample losses kept",
    "lecture_overfit_subset": "claim 6a: channels 8 and 32 on 1,000 training images",
    "lecture_capacity": "claim 6b: channels x fc units around the lecture's net (12 jobs) on the full set",
}
ENDED = ("completed", "diverged")  # a diverged run has ended: its curves are its result
DEFAULT_EPOCHS = 50
BASELINE = {"lr": 0.1}  # the lecture's run inside lecture_lr
DATA_PLACEHOLDER = "/path/to/cifar10"
FIGURE_DPI = 100
# Epochs at which the per-sample loss quantiles are tabulated (the nearest kept epoch is used).
QUANTILE_EPOCHS = (1, 10, 25, 50)

# The thresholds of the verdict rules (quoted in the report next to each check).
ACC_BAND = (0.60, 0.75)  # claim 1: final test accuracy
MIN_DECADES = 1.0  # claim 1: log10(train loss at epoch 1 / at the last epoch)
STALL_POINTS = 0.02  # claim 1: |test acc change| over the second half of the epochs
BOUNCE_RATIO = 1.5  # claim 2: upward train-loss movement, largest lr vs the lecture's
SLOW_RATIO = 1.25  # claim 2: train loss at epoch 10, smallest lr vs the lecture's
SLOW_EPOCH = 10
LECTURE_LR2 = 0.05  # claim 3: the lecture's pick
LOSS_RISE = 1.5  # claim 4: last test loss / its minimum
ACC_HOLD = 0.05  # claim 4: best - last test accuracy
TAIL_RISE = 1.5  # claims 4, 5: test-loss 90th percentile, late / early
COLLAPSE = 10.0  # claim 5: train median, early / late


# --------------------------------------------------------------------------- formatting


def _num(value, digits: int = 3) -> str:
    """Significant digits; '–' for a missing value."""
    if value is None or is_missing(value):
        return "–"
    value = float(value)
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    return f"{value:.{digits}g}"


def _count(value) -> str:
    return "–" if value is None or is_missing(value) else f"{int(round(float(value))):,}"


def _acc(value) -> str:
    return "–" if value is None or is_missing(value) else f"{float(value):.3f}"


def _epoch(value) -> str:
    return "–" if value is None or is_missing(value) else str(int(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _ratio(a, b) -> float:
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.nan
    if b == 0:
        return math.inf if a > 0 else math.nan
    return a / b


# --------------------------------------------------------------------------- experiments and run selections


@dataclass
class Experiment:
    """One sweep dir under ROOT (or its absence)."""

    name: str
    path: Path
    shown: str  # the sweep dir as written in commands (ROOT as given on the command line)
    sweep: Sweep | None = None
    missing: list[MissingJob] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)

    @property
    def present(self) -> bool:
        return self.sweep is not None or bool(self.missing)

    def epochs_target(self) -> int:
        if self.sweep is not None and "trainer.epochs" in self.sweep.runs:
            values = self.sweep.runs["trainer.epochs"].dropna()
            if len(values):
                return int(values.max())
        return DEFAULT_EPOCHS


def load_experiments(root: Path, shown_root: str) -> dict[str, Experiment]:
    """The experiments under ROOT; absent ones come back with present=False."""
    import json

    out = {}
    for name in EXPERIMENTS:
        path = root / name
        exp = Experiment(name, path, f"{shown_root.rstrip('/')}/{name}")
        if path.is_dir():
            refs, exp.missing = discover(path)
            if refs:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        exp.sweep = load_sweep(path)
                    except NoRunsFound:
                        exp.sweep = None
            try:
                record = json.loads((path / "sweep.json").read_text())
                argv = [str(a) for a in record.get("argv", [])]
                exp.argv = argv[1:] if argv and argv[0].endswith(".py") else argv  # sys.argv[0]: the script
            except (OSError, ValueError, AttributeError):
                exp.argv = []
        out[name] = exp
    return out


def _override_dict(overrides: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def _same_value(written: str, value) -> bool:
    try:
        return float(written) == float(value)
    except (TypeError, ValueError):
        return written == format_value(value)


@dataclass
class Selection:
    """The runs of one experiment that test a claim, plus its jobs that have no record yet."""

    exp: Experiment
    where: dict
    sweep: Sweep | None  # the runs with at least one epoch logged: the claims read their curves
    missing: list[MissingJob]
    unlogged: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["run", "status"]))

    @property
    def runs(self) -> pd.DataFrame:
        return self.sweep.runs if self.sweep is not None else pd.DataFrame(columns=["run", "status"])

    @property
    def curves(self) -> pd.DataFrame:
        return self.sweep.curves if self.sweep is not None else pd.DataFrame(columns=["run", "epoch"])

    @property
    def empty(self) -> bool:
        return self.runs.empty and self.unlogged.empty and not self.missing

    @property
    def complete(self) -> bool:
        return (
            not self.missing
            and self.unlogged.empty
            and bool(self.runs["status"].isin(ENDED).all())
            and not self.runs.empty
        )

    def label(self, run: str) -> str:
        """A run by its varied keys (lr=0.1), else by its id."""
        return self._label(self.runs.loc[self.runs["run"] == run].iloc[0])

    def _label(self, row) -> str:
        keys = self.exp.sweep.varied if self.exp.sweep is not None else []
        shown = [f"{k}={format_value(row[k])}" for k in keys if k in row]
        return ", ".join(shown) or f"run {row['run']}"

    def progress(self) -> str | None:
        """None when every run has ended, else 'partial: N/E epochs (what is not done)'."""
        if self.complete:
            return None
        target = self.exp.epochs_target()
        pending, least = [], None
        for _, row in self.unlogged.iterrows():  # started (or failed at its start), nothing logged
            least = 0
            pending.append(f"{self._label(row)}: {row['status']}, 0/{target}")
        for row in self.runs.itertuples():
            if row.status in ENDED:
                continue
            done = int(row.epochs_done)
            least = done if least is None else min(least, done)
            pending.append(f"{self.label(row.run)}: {row.status}, {done}/{target}")
        for job in self.missing:
            least = 0
            shown = (
                " ".join(o for o in job.overrides if not o.startswith("experiment=")) or f"job {job.job_num}"
            )
            pending.append(f"{shown}: not started")
        return f"partial: {least or 0}/{target} epochs ({'; '.join(pending)})"

    def run_curves(self, run: str) -> pd.DataFrame:
        return self.curves[self.curves["run"] == run].sort_values("epoch")


def select(exp: Experiment, where: dict) -> Selection:
    unlogged = pd.DataFrame(columns=["run", "status"])
    if exp.sweep is not None:
        usable = {k: v for k, v in where.items() if k in exp.sweep.runs}
        sweep = exp.sweep.subset(usable) if usable else exp.sweep
        # A run with no epoch logged yet (just started, killed or failed at its start) has no
        # curve to test a claim on: it counts as pending, like a job not started.
        logged = sweep.runs["epochs_done"] > 0
        if not logged.all():
            unlogged = sweep.runs.loc[~logged]
            sweep = dataclasses.replace(
                sweep,
                runs=sweep.runs[logged],
                curves=sweep.curves[sweep.curves["run"].isin(sweep.runs.loc[logged, "run"])],
            )
            if sweep.runs.empty:
                sweep = None
    else:
        sweep = None
    missing = [
        job
        for job in exp.missing
        if all(
            k not in (o := _override_dict(job.overrides)) or _same_value(o[k], v) for k, v in where.items()
        )
    ]
    return Selection(exp, where, sweep, missing, unlogged)


def pick_source(exps: dict[str, Experiment], candidates: Sequence[tuple[str, dict]]) -> Selection | None:
    """The first candidate whose runs have all ended, else the first one present."""
    found = [select(exps[name], where) for name, where in candidates if exps[name].present]
    found = [sel for sel in found if not sel.empty]
    complete = [sel for sel in found if sel.complete]
    return (complete or found or [None])[0]


# --------------------------------------------------------------------------- claims


@dataclass
class Check:
    rule: str
    observed: str
    passed: bool | None  # None: cannot be evaluated on these runs

    def __post_init__(self):
        if self.passed is not None:
            self.passed = bool(self.passed)  # numpy booleans are not `is False`


@dataclass
class Claim:
    key: str
    title: str
    statement: str
    experiments: list[str]  # the experiments that test it, the preferred first
    source: Selection | None = None
    checks: list[Check] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figure: str | None = None
    figure_note: str | None = None
    not_run_note: str | None = None
    extra_sources: list[Selection] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.source is None:
            return "not run"
        progress = self.source.progress()
        for extra in self.extra_sources:
            progress = progress or extra.progress()
        if progress:
            return progress
        known = [c.passed for c in self.checks if c.passed is not None]
        if not known:
            return "undecided (nothing could be checked)"
        if all(known):  # a check these runs cannot decide (a tie within the noise) is not a pass
            return "supported" if len(known) == len(self.checks) else "partly supported"
        return "partly supported" if any(known) else "not supported"

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if c.passed is False]


def _mark(passed: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "n/a"}[passed]


def _all(values: Sequence[bool | None]) -> bool | None:
    known = [v for v in values if v is not None]
    if len(known) < len(values) or not known:
        return None
    return all(known)


def _per_run(sel: Selection, fn: Callable[[str], tuple[str, bool | None]]) -> tuple[str, bool | None]:
    """A check over every run of a selection: passes when it passes in all of them."""
    results = [
        (sel.label(run), obs, None if passed is None else bool(passed))
        for run in sel.runs["run"]
        for obs, passed in [fn(run)]
    ]
    if len(results) == 1:
        return results[0][1], results[0][2]
    observed = "; ".join(f"{label}: {obs}" for label, obs, _ in results)
    passed = _all([p for _, _, p in results])
    n_pass = sum(p is True for _, _, p in results)
    return f"{n_pass}/{len(results)} runs — {observed}", passed


def _value_at(curve: pd.DataFrame, epoch, metric: str) -> float:
    if is_missing(epoch):
        return math.nan
    row = curve.loc[curve["epoch"] == int(epoch), metric]
    return float(row.iloc[0]) if len(row) and not is_missing(row.iloc[0]) else math.nan


def _run_row(sel: Selection, run: str) -> pd.Series:
    return sel.runs.loc[sel.runs["run"] == run].iloc[0]


def _wall_time(sel: Selection, run: str) -> float:
    row = _run_row(sel, run)
    if not is_missing(row.get("time_s")):
        return float(row["time_s"])
    curve = sel.run_curves(run)
    return (
        float(curve["time_s"].dropna().iloc[-1])
        if "time_s" in curve and curve["time_s"].notna().any()
        else math.nan
    )


def _minutes(seconds: float) -> str:
    if math.isnan(seconds):
        return "–"
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"  # not "0.0 min" for 3 s


# ----- claim 1


def claim_1(exps: dict[str, Experiment]) -> Claim:
    claim = Claim(
        "1",
        "Train loss falls over orders of magnitude; test accuracy rises into 0.6–0.75, then stalls",
        "Small convnet on CIFAR-10, cross-entropy, batch 100, lr 0.1, 50 epochs: the train loss falls "
        "over orders of magnitude (log scale) while test accuracy rises into the 0.6–0.75 band and "
        "then stalls.",
        ["lecture_baseline", "lecture_lr"],
    )
    sel = claim.source = pick_source(exps, [("lecture_baseline", {}), ("lecture_lr", BASELINE)])
    if sel is None or sel.runs.empty:
        return claim
    target = sel.exp.epochs_target()
    mid = target // 2
    rows, stats = [], {}
    for run in sel.runs["run"]:
        curve, row = sel.run_curves(run), _run_row(sel, run)
        first, last = curve.iloc[0], curve.iloc[-1]
        decades = math.log10(_ratio(first["train_loss"], last["train_loss"])) if len(curve) else math.nan
        change = (
            last["test_acc"] - _value_at(curve, mid, "test_acc") if int(last["epoch"]) > mid else math.nan
        )
        stats[run] = {
            "decades": decades,
            "change": change,
            "final_acc": last["test_acc"],
            "first": first["train_loss"],
            "last": last["train_loss"],
            "last_epoch": int(last["epoch"]),
        }
        rows.append(
            [
                sel.label(run),
                row["status"],
                f"{int(row['epochs_done'])}/{target}",
                _num(first["train_loss"]),
                _num(last["train_loss"]),
                f"{decades:.2f}",
                f"{_num(row['min_train_loss'])} (ep. {_epoch(row['min_train_loss_epoch'])})",
                f"{_acc(row['best_test_acc'])} (ep. {_epoch(row['best_test_acc_epoch'])})",
                _acc(last["test_acc"]),
                "–" if math.isnan(change) else f"{100 * change:+.1f}",
                _minutes(_wall_time(sel, run)),
            ]
        )
    claim.tables.append(
        _table(
            [
                "run",
                "status",
                "epochs",
                "train loss ep. 1",
                "final train loss",
                "decades fallen",
                "min train loss",
                "best test acc",
                "final test acc",
                f"test acc change ep. {mid}→last (points)",
                "wall time",
            ],
            rows,
        )
    )
    for run, st in stats.items():
        row = _run_row(sel, run)
        chance = math.log(10)
        claim.notes.append(
            f"{sel.label(run)}: from the chance-level loss of 10 classes, ln 10 ≈ {chance:.2f}, the train loss fell "
            f"{math.log10(_ratio(chance, st['last'])):.2f} decades by the last epoch; its minimum, "
            f"{_num(row['min_train_loss'])} at epoch {_epoch(row['min_train_loss_epoch'])}, is "
            f"{math.log10(_ratio(st['first'], row['min_train_loss'])):.2f} decades below epoch 1. (Context only: the "
            "rule uses the logged epochs 1 and last.)"
        )
    lo, hi = ACC_BAND
    claim.checks = [
        Check(
            f"final test accuracy in [{lo}, {hi}]",
            *_per_run(sel, lambda r: (_acc(stats[r]["final_acc"]), lo <= stats[r]["final_acc"] <= hi)),
        ),
        Check(
            f"train loss falls by ≥ {MIN_DECADES:g} order of magnitude from epoch 1 to the last epoch "
            "(log10 of their ratio)",
            *_per_run(
                sel,
                lambda r: (
                    f"{stats[r]['decades']:.2f} decades ({_num(stats[r]['first'])} → "
                    f"{_num(stats[r]['last'])})",
                    stats[r]["decades"] >= MIN_DECADES,
                ),
            ),
        ),
        Check(
            f"test accuracy stalls: it changes by less than {100 * STALL_POINTS:g} points between epoch {mid} "
            "and the last epoch",
            *_per_run(
                sel,
                lambda r: (
                    "not reached yet"
                    if math.isnan(stats[r]["change"])
                    else f"{100 * stats[r]['change']:+.1f} points",
                    None if math.isnan(stats[r]["change"]) else abs(stats[r]["change"]) < STALL_POINTS,
                ),
            ),
        ),
    ]
    return claim


# ----- claim 2


def _upward_decades(curve: pd.DataFrame) -> float:
    """Sum of the epoch-to-epoch rises of log10(train loss): how much the curve bounces back up."""
    logs = np.log10(curve["train_loss"].to_numpy(dtype=float))
    steps = np.diff(logs)
    return float(np.nansum(np.clip(steps, 0, None)))


def claim_2(exps: dict[str, Experiment]) -> Claim:
    claim = Claim(
        "2",
        "Too large a rate bounces, too small a rate is slow",
        "lr ∈ {0.2, 0.1, 0.01}: too large a rate bounces, too small a rate is slow; the curves separate "
        "as the lecture describes (the middle rate, the lecture's 0.1, ends lowest).",
        ["lecture_lr"],
    )
    sel = claim.source = pick_source(exps, [("lecture_lr", {})])
    if sel is None or sel.runs.empty:
        return claim
    runs = sel.runs.sort_values("lr", ascending=False)
    info = {}
    rows = []
    for row in runs.itertuples():
        curve = sel.run_curves(row.run)
        bounce = math.inf if row.status == "diverged" else _upward_decades(curve)
        rises = int((np.diff(curve["train_loss"].to_numpy(dtype=float)) > 0).sum())
        final = curve["train_loss"].iloc[-1] if len(curve) else math.nan
        info[row.lr] = {
            "bounce": bounce,
            "at_slow": _value_at(curve, SLOW_EPOCH, "train_loss"),
            "final": math.inf if row.status == "diverged" else final,  # it did not end low
            "status": row.status,
            "epochs": int(row.epochs_done),
        }
        rows.append(
            [
                format_value(row.lr),
                row.status,
                f"{int(row.epochs_done)}/{sel.exp.epochs_target()}",
                _num(_value_at(curve, 1, "train_loss")),
                _num(info[row.lr]["at_slow"]),
                "diverged" if row.status == "diverged" else _num(final),
                f"{_num(row.min_train_loss)} (ep. {_epoch(row.min_train_loss_epoch)})",
                "diverged" if math.isinf(bounce) else f"{bounce:.2f} ({rises})",
                f"{_acc(row.best_test_acc)} (ep. {_epoch(row.best_test_acc_epoch)})",
                _acc(row.final_test_acc),
                _minutes(_wall_time(sel, row.run)),
            ]
        )
    claim.tables.append(
        _table(
            [
                "lr",
                "status",
                "epochs",
                "train loss ep. 1",
                f"train loss ep. {SLOW_EPOCH}",
                "final train loss",
                "min train loss",
                "upward train-loss movement, decades (epochs with a rise)",
                "best test acc",
                "final test acc",
                "wall time",
            ],
            rows,
        )
    )
    lrs = sorted(info)
    if len(lrs) < 3:
        claim.checks = [Check("needs three learning rates", f"{len(lrs)} present", None)]
        return claim
    large, small = lrs[-1], lrs[0]
    middle = next((lr for lr in lrs if math.isclose(lr, BASELINE["lr"])), lrs[len(lrs) // 2])
    big, mid, low = info[large], info[middle], info[small]
    slow_ratio = _ratio(low["at_slow"], mid["at_slow"])
    finals = {lr: info[lr]["final"] for lr in lrs}
    lowest = min(finals, key=lambda lr: np.inf if math.isnan(finals[lr]) else finals[lr])
    bounce_ratio = _ratio(big["bounce"], mid["bounce"])
    claim.checks = [
        Check(
            f"lr={format_value(large)} bounces: its train loss moves back up by ≥ {BOUNCE_RATIO:g}× as many "
            f"decades (summed epoch-to-epoch rises of log10 train loss) as lr={format_value(middle)}'s, or diverges",
            "diverged"
            if math.isinf(big["bounce"])
            else f"{big['bounce']:.2f} vs {mid['bounce']:.2f} decades ({_num(bounce_ratio)}×)",
            bool(bounce_ratio >= BOUNCE_RATIO) if not math.isnan(bounce_ratio) else None,
        ),
        Check(
            f"lr={format_value(small)} is slow: its train loss at epoch {SLOW_EPOCH} is ≥ {SLOW_RATIO:g}× "
            f"lr={format_value(middle)}'s",
            f"{_num(low['at_slow'])} vs {_num(mid['at_slow'])} ({_num(slow_ratio)}×)",
            None if math.isnan(slow_ratio) else bool(slow_ratio >= SLOW_RATIO),
        ),
        Check(
            f"the curves separate: lr={format_value(middle)} ends with the lowest train loss",
            ", ".join(
                f"lr={format_value(lr)}: {'diverged' if math.isinf(finals[lr]) else _num(finals[lr])}"
                for lr in lrs
            ),
            None if any(math.isnan(v) for v in finals.values()) else bool(math.isclose(lowest, middle)),
        ),
    ]
    return claim


# ----- claim 3


def claim_3(exps: dict[str, Experiment], noise: float | None) -> Claim:
    claim = Claim(
        "3",
        "Reducing the rate after 25 epochs lets the train loss drop further; lr2 = 0.05 is best",
        "lr 0.1 for 25 epochs, then lr2 ∈ {0.07, 0.05, 0.02}: reducing the rate lets the train loss drop "
        "further; one of the lr2 values is the best choice (the lecture picks 0.05).",
        ["lecture_lr2"],
    )
    sel = claim.source = pick_source(exps, [("lecture_lr2", {})])
    if sel is None or sel.runs.empty or "schedule.lr2" not in sel.runs:
        return claim
    reference = pick_source(exps, [("lecture_baseline", {}), ("lecture_lr", BASELINE)])
    ref_run = reference.runs["run"].iloc[0] if reference is not None and not reference.runs.empty else None
    ref_curve = reference.run_curves(ref_run) if ref_run is not None else None
    runs = sel.runs.sort_values("schedule.lr2", ascending=False)
    rows, drops = [], {}
    for row in runs.to_dict("records"):
        run, lr2 = row["run"], row["schedule.lr2"]
        switch = int(row["schedule.epoch"])
        curve = sel.run_curves(run)
        at_switch = _value_at(curve, switch, "train_loss")
        after = curve[curve["epoch"] > switch]
        if after.empty:
            min_after, min_epoch = math.nan, None
        else:
            best = after.loc[after["train_loss"].idxmin()]
            min_after, min_epoch = float(best["train_loss"]), int(best["epoch"])
        ref_min = math.nan
        if ref_curve is not None and not after.empty:
            ref_after = ref_curve[
                (ref_curve["epoch"] > switch) & (ref_curve["epoch"] <= int(after["epoch"].max()))
            ]
            ref_min = float(ref_after["train_loss"].min()) if not ref_after.empty else math.nan
        drops[lr2] = {"at_switch": at_switch, "min_after": min_after, "ref_min": ref_min, "switch": switch}
        rows.append(
            [
                format_value(lr2),
                row["status"],
                f"{int(row['epochs_done'])}/{sel.exp.epochs_target()}",
                _num(at_switch),
                f"{_num(min_after)} (ep. {_epoch(min_epoch)})",
                _num(ref_min),
                _num(curve["train_loss"].iloc[-1] if len(curve) else math.nan),
                f"{_acc(row['best_test_acc'])} (ep. {_epoch(row['best_test_acc_epoch'])})",
                _acc(row["final_test_acc"]),
                _num(row["final_test_loss"]),
                _minutes(_wall_time(sel, run)),
            ]
        )
    ref_label = (
        f"{reference.exp.name} {reference.label(ref_run)}, same epochs"
        if ref_run is not None
        else "no run without a switch"
    )
    claim.tables.append(
        _table(
            [
                "lr2",
                "status",
                "epochs",
                "train loss at the switch",
                "min train loss after it",
                f"min train loss without a switch ({ref_label})",
                "final train loss",
                "best test acc",
                "final test acc",
                "final test loss",
                "wall time",
            ],
            rows,
        )
    )

    ranking = rank_configs(sel.runs, "final_test_acc", ["schedule.lr2"], statuses=ENDED)
    by_train = rank_configs(sel.runs, "final_train_loss", ["schedule.lr2"], statuses=ENDED)
    best = ranking["schedule.lr2"].iloc[0] if not ranking.empty else None
    order = ", ".join(
        f"{format_value(r['schedule.lr2'])}: {_acc(r['mean'])}" for r in ranking.to_dict("records")
    )
    claim.tables.append(
        "Runs that have ended, ranked by final test accuracy: "
        + (order or "–")
        + ". By final train loss: "
        + (
            ", ".join(
                f"{format_value(r['schedule.lr2'])}: {_num(r['mean'])}" for r in by_train.to_dict("records")
            )
            or "–"
        )
        + ".\n"
    )
    drop_ok = [
        None if math.isnan(d["min_after"]) else bool(d["min_after"] < d["at_switch"]) for d in drops.values()
    ]
    below_ref = [
        None
        if math.isnan(d["ref_min"]) or math.isnan(d["min_after"])
        else bool(d["min_after"] < d["ref_min"])
        for d in drops.values()
    ]
    switch = next(iter(drops.values()))["switch"] if drops else 25
    gap = float(ranking["mean"].iloc[0] - ranking["mean"].iloc[1]) if len(ranking) >= 2 else math.nan
    # A lead smaller than the seed-to-seed spread does not pick a best lr2: another seed could
    # order them the other way (the JPEG runs: 0.6793 against 0.6792, one test image).
    tied = noise is not None and not math.isnan(gap) and gap < noise
    best_observed = (
        "waits for every lr2 run to end"
        if not sel.complete or best is None
        else f"best: {format_value(best)}, {100 * gap:.2f} points ahead of "
        f"{format_value(ranking['schedule.lr2'].iloc[1])}, within the seed-to-seed std of "
        f"{100 * noise:.1f} points: a tie, not a pick"
        if tied
        else f"best: {format_value(best)}"
    )
    claim.checks = [
        Check(
            f"after the switch (epoch {switch}) the train loss of every lr2 run drops below its value at the switch",
            ", ".join(
                f"lr2={format_value(k)}: {_num(d['at_switch'])} → {_num(d['min_after'])}"
                for k, d in drops.items()
            ),
            _all(drop_ok),
        ),
        Check(
            "every lr2 run's train loss also drops below that of the same net kept at lr 0.1, over the same epochs",
            ", ".join(
                f"lr2={format_value(k)}: {_num(d['min_after'])} vs {_num(d['ref_min'])}"
                for k, d in drops.items()
            )
            if ref_run is not None
            else "no run without a switch",
            _all(below_ref) if ref_run is not None else None,
        ),
        Check(
            f"the best lr2 by final test accuracy is the lecture's {LECTURE_LR2:g}, by more than the "
            "seed-to-seed std where lecture_test_loss measures it",
            best_observed,
            None
            if best is None or not sel.complete or tied
            else bool(math.isclose(float(best), LECTURE_LR2)),
        ),
    ]
    if len(ranking) >= 2 and sel.complete:
        spread = (
            f"the seed-to-seed std of lecture_test_loss, {100 * noise:.1f} points"
            if noise is not None
            else "the seed-to-seed spread, which one seed per lr2 cannot measure (lecture_test_loss does)"
        )
        claim.notes.append(
            f"The best lr2 leads the next by {100 * gap:.2f} points of test accuracy; compare with {spread}."
        )
    claim.extra_sources = [reference] if reference is not None else []
    return claim


# ----- claim 4


def _nearest_kept(kept: Sequence[int], epoch) -> int | None:
    if not len(kept) or is_missing(epoch):
        return None
    return int(min(kept, key=lambda e: (abs(e - int(epoch)), e)))


def _quantiles(sel: Selection, run: str) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantiles = sel.sweep.loss_quantiles([run]) if sel.sweep is not None else pd.DataFrame()
    return quantiles


def _q(quantiles: pd.DataFrame, epoch, split: str, column: str) -> float:
    if epoch is None or quantiles.empty:
        return math.nan
    row = quantiles[(quantiles["epoch"] == epoch) & (quantiles["split"] == split)]
    return float(row[column].iloc[0]) if len(row) else math.nan


def _decoupling_text(d: pd.Series) -> str:
    where = (
        f"loss min at epoch {_epoch(d['min_test_loss_epoch'])}, "
        f"accuracy peak at epoch {_epoch(d['best_test_acc_epoch'])}"
    )
    if not d["epochs_apart"] > 0:  # a gain "after" the minimum is meaningless before it
        return f"{where}: the peak is not after the minimum"
    return (
        f"{where} ({100 * d['acc_gain_after_min_loss']:+.1f} points, "
        f"test loss {100 * d['loss_rise_at_best_acc']:+.0f}%)"
    )


def claim_4(exps: dict[str, Experiment]) -> Claim:
    claim = Claim(
        "4",
        "Test loss rises while test accuracy holds or improves",
        "While test accuracy still holds or improves, test loss increases: the model becomes more wrong "
        "on the examples it misclassifies.",
        ["lecture_test_loss", "lecture_baseline", "lecture_lr"],
    )
    sel = claim.source = pick_source(
        exps, [("lecture_test_loss", {}), ("lecture_baseline", {}), ("lecture_lr", BASELINE)]
    )
    if sel is None or sel.runs.empty:
        return claim
    # The claim says "holds or improves": no minimum accuracy gain after the test-loss minimum.
    decoupling = loss_acc_decoupling(sel.curves, min_acc_gain=0.0, min_loss_rise=0.02)
    info, rows = {}, []
    for run in sel.runs["run"]:
        d, row, curve = decoupling.loc[run], _run_row(sel, run), sel.run_curves(run)
        quantiles = _quantiles(sel, run)
        kept = sorted(quantiles["epoch"].unique().tolist()) if not quantiles.empty else []
        near_min = _nearest_kept(kept, d["min_test_loss_epoch"])
        late = kept[-1] if kept else None
        q_early, q_late = _q(quantiles, near_min, "test", "q0.9"), _q(quantiles, late, "test", "q0.9")
        last = curve.iloc[-1]
        info[run] = {
            "decoupled": bool(d["decoupled"]),
            "d": d,
            "loss_rise": _ratio(last["test_loss"], d["min_test_loss"]),
            "acc_drop": d["best_test_acc"] - last["test_acc"],
            "last_epoch": int(last["epoch"]),
            # The kept epoch nearest the minimum may be the last kept one: nothing comes after it.
            "tail": _ratio(q_late, q_early) if near_min is not None and late > near_min else math.nan,
            "q": (near_min, q_early, late, q_late),
        }
        rows.append(
            [
                sel.label(run),
                row["status"],
                f"{_num(d['min_test_loss'])} (ep. {_epoch(d['min_test_loss_epoch'])})",
                f"{_acc(d['best_test_acc'])} (ep. {_epoch(d['best_test_acc_epoch'])})",
                _acc(d["test_acc_at_min_loss"]),
                _num(d["test_loss_at_best_acc"]),
                f"{_num(last['test_loss'])} ({_num(info[run]['loss_rise'])}× min)",
                _acc(last["test_acc"]),
                f"{_num(q_early)} (ep. {_epoch(near_min)}) → {_num(q_late)} (ep. {_epoch(late)})",
            ]
        )
    claim.tables.append(
        _table(
            [
                "run",
                "status",
                "min test loss",
                "best test acc",
                "test acc at the loss minimum",
                "test loss at the accuracy peak",
                "last test loss",
                "last test acc",
                "test-loss 90th percentile",
            ],
            rows,
        )
    )
    claim.checks = [
        Check(
            "test accuracy peaks at a later epoch than the test-loss minimum (so it held or improved after "
            "it: gain ≥ 0), with the test loss ≥ 2% above its minimum at the accuracy peak "
            "(diagnostics.loss_acc_decoupling with min_acc_gain=0); a peak at the minimum's own epoch fails",
            *_per_run(
                sel,
                lambda r: (_decoupling_text(info[r]["d"]), info[r]["decoupled"]),
            ),
        ),
        Check(
            f"at the last epoch the test loss is ≥ {LOSS_RISE:g}× its minimum while test accuracy is within "
            f"{100 * ACC_HOLD:g} points of its best",
            *_per_run(
                sel,
                lambda r: (
                    f"{_num(info[r]['loss_rise'])}× the minimum, "
                    f"{100 * info[r]['acc_drop']:.1f} points below the best",
                    bool(info[r]["loss_rise"] >= LOSS_RISE and info[r]["acc_drop"] <= ACC_HOLD),
                ),
            ),
        ),
        Check(
            f"the misclassified get more wrong: the test-loss 90th percentile (well inside the misclassified "
            f"share) at the last kept epoch is ≥ {TAIL_RISE:g}× its value at the kept epoch nearest the "
            "test-loss minimum",
            *_per_run(
                sel,
                lambda r: (
                    f"{_num(info[r]['tail'])}×",
                    None if math.isnan(info[r]["tail"]) else bool(info[r]["tail"] >= TAIL_RISE),
                ),
            ),
        ),
    ]
    return claim


# ----- claim 5


def claim_5(exps: dict[str, Experiment]) -> Claim:
    claim = Claim(
        "5",
        "Per-sample loss distributions of train and test drift apart",
        "Per-sample loss distributions of train and test drift apart through the epochs: the train losses "
        "collapse towards zero while a part of the test losses grows — the picture of overfitting.",
        ["lecture_distributions", "lecture_baseline", "lecture_lr"],
    )
    sel = claim.source = pick_source(
        exps, [("lecture_distributions", {}), ("lecture_baseline", {}), ("lecture_lr", BASELINE)]
    )
    if sel is None or sel.runs.empty:
        return claim
    info = {}
    for run in sel.runs["run"]:
        quantiles = _quantiles(sel, run)
        if quantiles.empty:
            info[run] = None
            continue
        kept = sorted(quantiles["epoch"].unique().tolist())
        test_mean = quantiles[quantiles["split"] == "test"].set_index("epoch")["mean"]
        early = int(test_mean.idxmin()) if test_mean.notna().any() else kept[0]
        late = kept[-1]
        shown = sorted(
            {e for e in (_nearest_kept(kept, e) for e in QUANTILE_EPOCHS if e <= late) if e} | {early, late}
        )
        rows = []
        for epoch in shown:
            tm, t9 = _q(quantiles, epoch, "train", "q0.5"), _q(quantiles, epoch, "train", "q0.9")
            sm, s9 = _q(quantiles, epoch, "test", "q0.5"), _q(quantiles, epoch, "test", "q0.9")
            mark = " (early)" if epoch == early else " (late)" if epoch == late else ""
            rows.append([f"{epoch}{mark}", _num(tm), _num(t9), _num(sm), _num(s9), _num(_ratio(sm, tm))])
        claim.tables.append(
            f"Run {sel.label(run)} — per-sample loss quantiles from losses.npz (early = the kept "
            "epoch of lowest mean test loss, late = the last kept epoch):\n\n"
            + _table(
                [
                    "epoch",
                    "train median",
                    "train 90th pct",
                    "test median",
                    "test 90th pct",
                    "test / train median",
                ],
                rows,
            )
        )
        info[run] = {
            "early": early,
            "late": late,
            "collapse": _ratio(_q(quantiles, early, "train", "q0.5"), _q(quantiles, late, "train", "q0.5")),
            "tail": _ratio(_q(quantiles, late, "test", "q0.9"), _q(quantiles, early, "test", "q0.9")),
        }
        tracked = _tracked(Path(_run_row(sel, run)["run_dir"]), early, late)
        if tracked:
            claim.tables.append(tracked)

    def same(i) -> bool:
        return i["early"] == i["late"]

    def collapse(r):
        i = info[r]
        if i is None:
            return "no losses.npz yet", None
        if same(i):
            return (
                f"the mean test loss is lowest at the last kept epoch ({i['late']}): nothing to compare",
                False,
            )
        return (
            f"median {_num(i['collapse'])}× lower at epoch {i['late']} than at epoch {i['early']}",
            None if math.isnan(i["collapse"]) else bool(i["collapse"] >= COLLAPSE),
        )

    def tail(r):
        i = info[r]
        if i is None:
            return "no losses.npz yet", None
        if same(i):
            return (
                f"the mean test loss is lowest at the last kept epoch ({i['late']}): nothing to compare",
                False,
            )
        return (
            f"90th percentile {_num(i['tail'])}× higher at epoch {i['late']} than at epoch {i['early']}",
            None if math.isnan(i["tail"]) else bool(i["tail"] >= TAIL_RISE),
        )

    claim.checks = [
        Check(
            f"the train losses collapse: the train median at the late epoch is ≥ {COLLAPSE:g}× lower than at "
            "the early epoch",
            *_per_run(sel, collapse),
        ),
        Check(
            f"a part of the test losses grows: the test 90th percentile at the late epoch is ≥ {TAIL_RISE:g}× "
            "its value at the early epoch",
            *_per_run(sel, tail),
        ),
    ]
    return claim


def _tracked(run_dir: Path, early: int, late: int) -> str | None:
    """Sample by sample (raw losses kept): how many went down, up, up tenfold between two epochs."""
    a, b = read_sample_losses(run_dir, early), read_sample_losses(run_dir, late)
    if a is None or b is None or early == late:
        return None
    rows = []
    for split in ("train", "test"):
        x, y = a[split].astype(np.float64), b[split].astype(np.float64)
        if x.shape != y.shape or not len(x):
            return None
        rows.append(
            [
                split,
                f"{np.mean(y < x):.1%}",
                f"{np.mean(y > x):.1%}",
                f"{np.mean(y >= 10 * np.maximum(x, 1e-12)):.1%}",
                f"{np.mean(y == 0):.1%}",
            ]
        )
    return f"Sample by sample (raw losses in sample_losses/), epoch {early} → {late}:\n\n" + _table(
        ["split", "loss fell", "loss rose", "rose ≥ 10×", f"exactly 0 at epoch {late}"], rows
    )


# ----- claim 6a


def claim_6a(exps: dict[str, Experiment]) -> Claim:
    claim = Claim(
        "6a",
        "A net of enough capacity overfits a small subset",
        "A net of enough capacity overfits a small subset of the training set (train loss ≈ 0).",
        ["lecture_overfit_subset"],
    )
    sel = claim.source = pick_source(exps, [("lecture_overfit_subset", {})])
    if sel is None or sel.runs.empty:
        return claim
    verdicts = capacity_verdict(sel.curves, max_train_loss=0.01)  # the claim's "train loss ≈ 0"
    size_key = "n_params" if sel.runs["n_params"].notna().all() else "model.channels"
    runs = sel.runs.sort_values(size_key)
    rows = []
    for row in runs.to_dict("records"):
        v = verdicts.loc[row["run"]]
        rows.append(
            [
                sel.label(row["run"]),
                _epoch(row.get("data.train_size")),
                _epoch(row["n_params"]),
                row["status"],
                f"{int(row['epochs_done'])}/{sel.exp.epochs_target()}",
                f"{_num(v['min_train_loss'])} (ep. {_epoch(row['min_train_loss_epoch'])})",
                _acc(v["best_train_acc"]),
                _acc(row["final_test_acc"]),
                v["verdict"],
            ]
        )
    claim.tables.append(
        _table(
            [
                "run",
                "train images",
                "parameters",
                "status",
                "epochs",
                "min train loss",
                "best train acc",
                "final test acc",
                "diagnostics.capacity_verdict",
            ],
            rows,
        )
    )
    largest = runs["run"].iloc[-1]
    v = verdicts.loc[largest]
    label = sel.label(largest)
    curve = sel.run_curves(largest)
    if len(curve) > 10:
        before, last = curve.iloc[-11], curve.iloc[-1]
        claim.notes.append(
            f"The train loss of {label} went from {_num(before['train_loss'])} at epoch "
            f"{int(before['epoch'])} to {_num(last['train_loss'])} at epoch {int(last['epoch'])} "
            f"({_num(_ratio(before['train_loss'], last['train_loss']))}× lower in its last 10 epochs)."
        )
    claim.checks = [
        Check(
            f"the largest net ({label}) reaches train accuracy ≥ 99.9%",
            _acc(v["best_train_acc"]),
            bool(v["best_train_acc"] >= 0.999),
        ),
        Check(
            f"the largest net ({label}) reaches train loss ≤ 0.01 (with the accuracy above: capacity_verdict's fit)",
            f"min train loss {_num(v['min_train_loss'])}",
            bool(v["fits"]),
        ),
    ]
    return claim


# ----- claim 6b


CAPACITY_JOBS = 12  # conf/experiment/lecture_capacity.yaml: channels 8..64 x units 50..800
CAPACITY_KNOBS = ("model.conv_layers", "model.channels", "model.kernel_size", "model.units", "model.pool",
                  "model.padding", "model.growth")  # fmt: skip


def capacity_keys(runs: pd.DataFrame) -> list[str]:
    """The capacity knobs the runs vary (whichever grid ran), in CAPACITY_KNOBS' order."""
    return [k for k in CAPACITY_KNOBS if k in runs and runs[k].map(format_value).nunique() > 1]


def claim_6b(exps: dict[str, Experiment], baseline_s: float | None) -> Claim:
    claim = Claim(
        "6b",
        "Capacity modulated to neither overfit nor underfit the full set",
        "Capacity is modulated (layers, channels, receptive field, units) to neither overfit nor underfit "
        "the full training set.",
        ["lecture_capacity"],
    )
    sel = claim.source = pick_source(exps, [("lecture_capacity", {})])
    if sel is None or sel.runs.empty:
        estimate = ""
        if baseline_s:
            estimate = (
                f" At the pace of the lr=0.1 baseline on this machine ({_minutes(baseline_s)} per run) its "
                f"{CAPACITY_JOBS} jobs take about {CAPACITY_JOBS * baseline_s / 3600:.1f} h, more for the wider nets."
            )
        claim.not_run_note = (
            f"The capacity grid was not run: ROOT holds no lecture_capacity/ sweep.{estimate}"
        )
        return claim
    keys = capacity_keys(sel.runs)
    ranking = rank_configs(sel.runs, "final_test_acc", keys, statuses=None)
    state = {}
    rows = []
    for r in ranking.to_dict("records"):
        part = select_rows(sel.runs, {k: r[k] for k in keys})
        train_acc, test_acc = part["final_train_acc"].mean(), part["final_test_acc"].mean()
        gap = train_acc - test_acc
        s = fit_state(train_acc, test_acc)
        state[tuple(r[k] for k in keys)] = s
        rows.append(
            [
                *[format_value(r[k]) for k in keys],
                _count(part["n_params"].mean()),
                _acc(train_acc),
                _acc(test_acc),
                _acc(gap),
                s,
            ]
        )
    claim.tables.append(
        _table([*keys, "parameters", "final train acc", "final test acc", "train - test acc", "state"], rows)
    )
    states = list(state.values())
    best = states[0] if states else None
    claim.checks = [
        Check(
            f"some configuration underfits (final train accuracy < {UNDERFIT_TRAIN_ACC})",
            f"{states.count('underfits')} of {len(states)}",
            bool("underfits" in states),
        ),
        Check(
            f"some configuration overfits (train − test accuracy > {OVERFIT_GAP})",
            f"{states.count('overfits')} of {len(states)}",
            bool("overfits" in states),
        ),
        Check(
            "the best configuration by final test accuracy does neither",
            f"best: {', '.join(f'{k}={format_value(ranking[k].iloc[0])}' for k in keys)} ({best})",
            None if best is None else best == "neither",
        ),
    ]
    return claim


# --------------------------------------------------------------------------- figures


def _save(fig, path: Path, size: tuple[float, float]) -> None:
    fig.set_size_inches(*size)
    fig.savefig(path, dpi=FIGURE_DPI)


def draw_figure(claim: Claim, exps: dict[str, Experiment], figures_dir: Path) -> None:
    """Draw the claim's figure into figures_dir; a figure that cannot be drawn leaves a note."""
    from analysis import plots

    sel = claim.source
    if sel is None or sel.sweep is None or sel.curves.empty:
        return
    name = f"claim{claim.key}.png"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig, size = _figure(claim, sel, exps, plots)
    except plots.NothingToPlot as err:
        claim.figure_note = f"figure skipped: {err}"
        return
    _save(fig, figures_dir / name, size)
    claim.figure = name


def _distribution_epochs(kept: Sequence[int]) -> list[int]:
    """Claim 5's panels: the kept epochs nearest QUANTILE_EPOCHS, and the last kept one, the
    check's "late" epoch, even when the runs stop short of 50 epochs."""
    if not kept:
        return []
    last = kept[-1]
    return sorted({_nearest_kept(kept, e) for e in QUANTILE_EPOCHS if e <= last} | {last})


def _figure(claim: Claim, sel: Selection, exps: dict[str, Experiment], plots):
    key = claim.key
    if key == "1":
        fig = plots.plot_curves(sel.curves, title="lr 0.1: train loss (log) and test accuracy")
        lo, hi = ACC_BAND
        fig.axes[1].axhspan(lo, hi, color="C2", alpha=0.12, lw=0)
        return fig, (6, 4.5)
    if key == "2":
        return plots.plot_curves(sel.curves, hue="lr", title="by learning rate"), (6, 5)
    if key == "3":
        reference = pick_source(exps, [("lecture_baseline", {}), ("lecture_lr", BASELINE)])
        paths = [sel.exp.path]
        if reference is not None and not reference.runs.empty:
            paths.append(Path(reference.runs["run_dir"].iloc[0]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            both = load_sweep(paths)
        fig = plots.plot_lr_switch(
            both.curves, both.runs, keys=both.group_keys, title="lr 0.1, then lr2 (grey: kept at lr 0.1)"
        )
        return fig, (8, 4)
    if key == "4":
        return plots.plot_loss_vs_accuracy(sel.curves, title="test loss vs test accuracy, lr 0.1"), (8, 4)
    if key == "5":
        dists = sel.sweep.distributions()
        kept = sorted(dists["epoch"].unique().tolist())
        fig = plots.plot_loss_distributions(
            dists, epochs=_distribution_epochs(kept), max_panels=4, ncols=2, title="per-sample loss, lr 0.1"
        )
        return fig, (8, 5)
    if key == "6a":
        fig = plots.plot_curves(
            sel.curves,
            metrics=("train_loss", "train_acc"),
            hue="model.channels",
            title="1,000 training images: train loss and accuracy",
        )
        return fig, (6, 4.5)
    if key == "6b":
        runs = sel.runs
        keys = capacity_keys(runs)
        if len(keys) < 2:
            raise plots.NothingToPlot(f"the capacity runs vary {len(keys)} knob(s); the heatmap needs two")
        # the two knobs with the most values on the axes; any other at the best run's value
        x, y = sorted(keys, key=lambda k: -runs[k].map(format_value).nunique())[:2]
        best = runs.loc[runs["final_test_acc"].idxmax()]
        fixed = [k for k in keys if k not in (x, y)]
        for k in fixed:
            runs = runs[runs[k].map(format_value) == format_value(best[k])]
        title = "final test acc" + "".join(f", {k}={format_value(best[k])} (the best)" for k in fixed)
        return plots.plot_heatmap(runs, x, y, "final_test_acc", statuses=None, title=title), (6, 4)
    raise plots.NothingToPlot(f"no figure for claim {key}")


# --------------------------------------------------------------------------- the report


def data_root(exps: dict[str, Experiment]) -> tuple[str | None, str | None]:
    """(data.name, data.root) of the first run that records them."""
    for exp in exps.values():
        if exp.sweep is not None and "data.name" in exp.sweep.runs:
            row = exp.sweep.runs.iloc[0]
            return row.get("data.name"), row.get("data.root")
    return None, None


def command(exp: Experiment, data: str | None) -> str:
    env = f"SWEEPER_DATA={shlex.quote(data or DATA_PLACEHOLDER)} "
    return f"{env}python -m sweeper -m experiment={exp.name} hydra.sweep.dir={shlex.quote(exp.shown)}"


def _state(exp: Experiment) -> str:
    if not exp.present:
        return "not run"
    counts = exp.sweep.runs["status"].value_counts() if exp.sweep is not None else pd.Series(dtype=int)
    parts = [f"{n} {s}" for s, n in counts.items()]
    if exp.missing:
        parts.append(f"{len(exp.missing)} not started")
    return ", ".join(parts)


def _machine(exps: dict[str, Experiment], note: str | None = None) -> list[str]:
    frames = [exp.sweep.runs for exp in exps.values() if exp.sweep is not None]
    if not frames:
        return ["_no runs_", ""]
    runs = pd.concat(frames, ignore_index=True)
    hosts = sorted({str(h) for h in runs["host"].dropna()}) if "host" in runs else []
    torch = sorted({str(v) for v in runs["versions.torch"].dropna()}) if "versions.torch" in runs else []
    python = sorted({str(v) for v in runs["versions.python"].dropna()}) if "versions.python" in runs else []
    devices = sorted({str(v) for v in runs["device"].dropna()}) if "device" in runs else []
    here = socket.gethostname()
    recorded = runs.dropna(subset=["cpu_count"]) if "cpu_count" in runs else runs.iloc[:0]
    if not recorded.empty:
        cpus = (
            ", ".join(
                sorted(
                    {
                        f"{int(r.cpu_count)} ({int(r.torch_threads)} torch threads)"
                        for r in recorded.itertuples()
                    }
                )
            )
            + " (summary.json)"
        )
    elif hosts == [here]:
        cpus = f"{os.cpu_count()} (os.cpu_count() on `{here}`, where this report was written; the run record does not hold it)"
    else:
        cpus = "not recorded in the run record"
    name, root = data_root(exps)
    return [
        f"- host: {', '.join(f'`{h}`' for h in hosts) or 'not recorded'}",
        f"- CPU cores: {cpus}",
        f"- device: {', '.join(devices) or 'not recorded (no run has finished)'}",
        f"- torch {', '.join(torch) or 'not recorded'}; python {', '.join(python) or 'not recorded'} "
        "(summary.json `versions`)",
        f"- data: `{name}` from `{root}`" if root is not None else f"- data: `{name}` (generated, no files)",
        *([f"- conditions: {note}"] if note else []),
        "",
    ]


def _wall_times(exps: dict[str, Experiment]) -> list[str]:
    rows = []
    for exp in exps.values():
        if exp.sweep is None:
            continue
        sel = Selection(exp, {}, exp.sweep, [])
        target = exp.epochs_target()
        for row in exp.sweep.runs.itertuples():
            seconds = _wall_time(sel, row.run)
            done = int(row.epochs_done)
            source = "summary.json" if not is_missing(row.time_s) else "last metrics line"
            rows.append(
                [
                    exp.name,
                    sel.label(row.run),
                    row.status,
                    f"{done}/{target}",
                    "–" if math.isnan(seconds) else f"{seconds:.0f}",
                    _minutes(seconds),
                    "–" if math.isnan(seconds) or not done else f"{seconds / done:.1f}",
                    source,
                ]
            )
    if not rows:
        return ["_no runs_", ""]
    return [
        "Wall seconds of training and evaluation (set-up excluded): summary.json `time_s`, or the last "
        "metrics line's `time_s` for a run in progress.",
        "",
        _table(["experiment", "run", "status", "epochs", "time_s", "wall time", "s / epoch", "from"], rows),
    ]


def _claim_section(claim: Claim, exps: dict[str, Experiment], data: str | None) -> list[str]:
    md = [f"## Claim {claim.key}: {claim.title}", "", f"> {claim.statement}", ""]
    sel = claim.source
    if sel is None:
        md += [
            f"**Verdict: not run.** {claim.not_run_note or ''}".rstrip(),
            "",
            "Run it with:",
            "",
            "```bash",
            *[command(exps[n], data) for n in claim.experiments[:1]],
            "```",
            "",
        ]
        return md
    where = ", ".join(f"{k}={format_value(v)}" for k, v in sel.where.items() if k in sel.runs)
    md += [
        f"Runs: `{sel.exp.name}`" + (f" ({where})" if where else "") + f", {len(sel.runs)} run(s) in "
        f"`{sel.exp.shown}`.",
        "",
        "```bash",
        command(sel.exp, data),
        "```",
        "",
    ]
    if sel.exp.argv:
        md += [f"As recorded in sweep.json: `python -m sweeper {' '.join(sel.exp.argv)}`", ""]
    others = [n for n in claim.experiments if n != sel.exp.name and not exps[n].present]
    if others and claim.experiments.index(sel.exp.name) > 0:
        md += [
            "The dedicated experiment " + ", ".join(f"`{n}`" for n in others[:1]) + " was not run; "
            f"`{command(exps[others[0]], data)}` runs it.",
            "",
        ]
    if claim.figure:
        md += [f"![claim {claim.key}](figures/{claim.figure})", ""]
    elif claim.figure_note:
        md += [f"_{claim.figure_note}_", ""]
    for table in claim.tables:
        md += [table, ""]
    if claim.checks:
        partial = claim.verdict.startswith("partial")
        md += [
            "Rules (the verdict is *supported* when every check passes, *partly supported* when some do "
            "and others fail or cannot be decided (n/a), *not supported* when none does):",
            "",
            _table(
                [
                    "check",
                    "observed" + (" so far" if partial else ""),
                    "passes" + (" so far" if partial else ""),
                ],
                [[c.rule, c.observed, _mark(c.passed)] for c in claim.checks],
            ),
            "",
        ]
    for note in claim.notes:
        md += [note, ""]
    verdict = claim.verdict
    failing = "; ".join(c.rule for c in claim.failed_checks)
    undecided = "; ".join(c.rule for c in claim.checks if c.passed is None)
    tail = (
        (f" — fails: {failing}" if failing else "") + (f" — undecided: {undecided}" if undecided else "")
        if verdict == "partly supported"
        else ""
    )
    md += [f"**Verdict: {verdict}**{tail}", ""]
    return md


# Overrides that change where or how a run is done, not what it computes.
NOT_PROTOCOL = (
    "experiment",
    "data.root",
    *RECORD_KEEPING,
    "trainer.device",
    "trainer.eval_batch_size",
    "trainer.cuda_graph",
    "trainer.channels_last",
)


def _user_overrides(argv: Sequence[str]) -> list[str]:
    """The overrides typed after `experiment=...` that change the protocol (not hydra.*, not paths)."""
    out = []
    for item in argv:
        key, sep, _ = item.partition("=")
        key = key.lstrip("+~")
        if (
            sep
            and not item.startswith("-")
            and key not in NOT_PROTOCOL
            and not key.startswith(("hydra.", "hydra/"))
        ):
            out.append(item)
    return out


def _differences(claims: list[Claim], exps: dict[str, Experiment]) -> list[str]:
    md = ["## Differences from the lecture", ""]
    name, root = data_root(exps)
    items = []
    if name is not None and name != "cifar10":
        items.append(f"The data is `{name}`, not CIFAR-10: these numbers say nothing about the lecture's.")
    elif root is not None and "jpeg" in str(root).lower():
        items.append(
            f"The data (`{root}`) is a JPEG copy of CIFAR-10 (quality 75, 4:2:0 chroma; about 30 dB PSNR "
            "against the originals, labels exact; see /work/shared/datasets/README.md): ordinary training "
            "curves match the original closely, results that hinge on fine pixel detail may differ."
        )
    seeded = {
        name: exp.sweep.runs["trainer.seed"].nunique()
        for name, exp in exps.items()
        if exp.sweep is not None and "trainer.seed" in exp.sweep.runs
    }
    single = [name for name, n in seeded.items() if n == 1]
    if single:
        several = [name for name, n in seeded.items() if n > 1]
        noise = _seed_noise(exps)
        measured = (
            f" (the seeds of `{several[0]}` differ by {100 * noise:.1f} points of final test accuracy, "
            "one std)"
            if several and noise is not None
            else ""
        )
        items.append(
            f"{', '.join(f'`{n}`' for n in single)} ran one seed per configuration: differences of about "
            f"a point of test accuracy between runs are within seed-to-seed noise{measured}."
        )
    for exp_name, exp in exps.items():
        extra = _user_overrides(exp.argv)
        if exp.present and extra:
            items.append(
                f"`{exp_name}` ran with these command-line overrides of its experiment file: "
                f"`{' '.join(extra)}`."
            )
    for claim in claims:
        verdict = claim.verdict
        if verdict in ("not supported", "partly supported"):
            failed = "; ".join(
                f"{c.rule}: {'undecided, ' if c.passed is None else ''}observed {c.observed}"
                for c in claim.checks
                if c.passed is not True
            )
            items.append(f"Claim {claim.key} ({claim.title}) is **{verdict}**: {failed}.")
        elif verdict == "not run":
            items.append(
                f"Claim {claim.key} ({claim.title}) was not tested: `{claim.experiments[0]}` was not run"
                + (f" — {claim.not_run_note}" if claim.not_run_note else ".")
            )
        elif verdict.startswith("partial"):
            items.append(f"Claim {claim.key} has no verdict yet ({verdict}).")
    md += [f"- {item}" for item in items] or ["- none found"]
    return md + [""]


def _rerun(exps: dict[str, Experiment], shown_root: str, out: str, data: str | None) -> list[str]:
    ran = [n for n, e in exps.items() if e.present] or ["lecture_lr", "lecture_lr2", "lecture_overfit_subset"]
    return [
        "## How to rerun",
        "",
        "`make reproduce` runs the experiments into `outputs/reproduction/<experiment>` and then writes this "
        "report into `docs/`. By hand:",
        "",
        "```bash",
        f"export SWEEPER_DATA={shlex.quote(data or DATA_PLACEHOLDER)}   # CIFAR-10: python batches, ImageFolder "
        "tree or .tar.gz",
        f"for e in {' '.join(ran)}; do python -m sweeper -m experiment=$e "
        f"hydra.sweep.dir={shlex.quote(shown_root.rstrip('/'))}/$e; done",
        f"python -m analysis.reproduction {shlex.quote(shown_root)} --out {shlex.quote(out)}",
        "```",
        "",
        "Running a sweep again into the same dir skips its completed runs and resumes interrupted ones. Any "
        "other `lecture_*` experiment ("
        + ", ".join(f"`{n}`" for n, e in exps.items() if not e.present)
        + ") is picked up by this report once its dir is under the root.",
        "",
    ]


def _seed_noise(exps: dict[str, Experiment]) -> float | None:
    """The std of final test accuracy over the completed seeds of lecture_test_loss (None without two)."""
    sweep = exps["lecture_test_loss"].sweep
    if sweep is None:
        return None
    done = sweep.runs.loc[sweep.runs["status"] == "completed", "final_test_acc"].dropna()
    return float(done.std()) if len(done) >= 2 else None


def build_claims(exps: dict[str, Experiment]) -> list[Claim]:
    noise = _seed_noise(exps)
    baseline = pick_source(exps, [("lecture_baseline", {}), ("lecture_lr", BASELINE)])
    baseline_s = None
    if baseline is not None and baseline.complete:
        baseline_s = _wall_time(baseline, baseline.runs["run"].iloc[0])
    return [
        claim_1(exps),
        claim_2(exps),
        claim_3(exps, noise),
        claim_4(exps),
        claim_5(exps),
        claim_6a(exps),
        claim_6b(exps, baseline_s),
    ]


def write_reproduction(
    root: str | os.PathLike,
    out: str | os.PathLike = "docs",
    shown_root: str | None = None,
    note: str | None = None,
) -> Path:
    """Write OUT/reproduction.md and OUT/figures/claim*.png for the experiments under ROOT."""
    root, out = Path(root), Path(out)
    shown_root = shown_root or str(root)
    exps = load_experiments(root, shown_root)
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    claims = build_claims(exps)
    for claim in claims:
        stale = figures_dir / f"claim{claim.key}.png"
        stale.unlink(missing_ok=True)  # a figure from an earlier report must not outlive its runs
        draw_figure(claim, exps, figures_dir)
    _, data = data_root(exps)

    md = [
        "# Reproducing the lecture on CIFAR-10",
        "",
        f"Generated by `python -m analysis.reproduction {shown_root} --out {out}` on "
        f"{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from the run records under "
        f"`{shown_root}`. Every number below is read from those records; every verdict follows from the numbers by "
        "the rules stated with it.",
        "",
        "| claim | verdict | runs |",
        "|---|---|---|",
    ]
    for claim in claims:
        source = (
            f"`{claim.source.exp.name}`" if claim.source is not None else f"`{claim.experiments[0]}` not run"
        )
        md.append(
            f"| [{claim.key}](#claim-{claim.key}-{_anchor(claim.title)}) {claim.title} | {claim.verdict} | "
            f"{source} |"
        )
    md += ["", "## Machine", ""] + _machine(exps, note)
    md += [
        "## Experiments",
        "",
        _table(
            ["experiment", "tests", "state", "sweep dir"],
            [
                [f"`{n}`", EXPERIMENTS[n], _state(e), f"`{e.shown}`" if e.present else "–"]
                for n, e in exps.items()
            ],
        ),
        "",
    ]
    for claim in claims:
        md += _claim_section(claim, exps, data)
    md += ["## Wall time per run", ""] + _wall_times(exps)
    md += _differences(claims, exps)
    md += _rerun(exps, shown_root, str(out), data)
    path = out / "reproduction.md"
    path.write_text("\n".join(md))
    return path


def _anchor(title: str) -> str:
    """GitHub's heading anchor for the part after 'Claim N: '."""
    text = "".join(c for c in title.lower() if c.isalnum() or c in " -_").replace(" ", "-")
    return text


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.reproduction",
        description="The lecture's claims checked against the runs under ROOT "
        "(sweep dirs named after the lecture_* experiments).",
    )
    parser.add_argument("root", metavar="ROOT", help="dir holding lecture_lr/, lecture_lr2/, ... sweep dirs")
    parser.add_argument(
        "--out", default="docs", help="where reproduction.md and figures/ go (default: %(default)s)"
    )
    parser.add_argument(
        "--note", help="how the runs were made, for the Machine section (load, threads, nice)"
    )
    args = parser.parse_args(argv)
    if not Path(args.root).is_dir():
        print(f"analysis.reproduction: error: {args.root}: no such directory", file=sys.stderr)
        return 2
    if not any((Path(args.root) / name).is_dir() for name in EXPERIMENTS):
        # A sweep dir given for ROOT, or a typo: a report of seven "not run" claims helps nobody.
        print(
            f"analysis.reproduction: error: {args.root}: no lecture sweep under it "
            f"(expected one of {', '.join(n + '/' for n in EXPERIMENTS)})",
            file=sys.stderr,
        )
        return 2
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"analysis.reproduction: error: cannot write to {args.out}: {err.strerror}", file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")
    path = write_reproduction(args.root, args.out, shown_root=args.root, note=args.note)
    print(f"reproduction report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Read run records (docs/run-record.md) into tidy pandas DataFrames: `load_sweep(dir).runs` (one
row per run), `.curves` (one row per run x epoch), `.varied` (config keys that differ between runs,
and `threads` when CPU runs ran on different thread counts: their numbers differ too), `.problems`
([(run_dir, reason)]) and `.distributions()` (losses.npz, read on demand, `allow_pickle=False`).

Columns are the dotted config names as written on the command line (`lr`, `model.channels`),
today's names for records written under a former one (sweeper.schema.renamed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import diagnostics
from analysis.cache import read_cache, write_cache
from analysis.discovery import (
    MissingJob,
    NoRunsFound,
    RunRef,
    _child_dirs,
    _dir_sort_key,
    discover,
    is_run_dir,
)
from analysis.knobs import (
    fill_older_records,
    flatten_config,
    is_missing,
    merged_key_order,
    typed_column,
    varied_keys,
)
from analysis.losses import empty_distributions, read_losses
from analysis.records import RunRecord, damaged, fingerprint, read_run
from analysis.status import run_status
from sweeper.objective import RESULTS
from sweeper.schema import renamed

SEED_KEY = "trainer.seed"


@dataclass
class _Loaded:
    ref: RunRef
    record: RunRecord
    last_write: float


def _metrics_frame(rows: list[dict], key: str, ids: list[str]) -> pd.DataFrame:
    """Rows of several runs -> one frame; `key` names the run each row came from."""
    if not rows:
        return pd.DataFrame({key: pd.Series([], dtype="str"), "epoch": pd.Series([], dtype="int64")})
    frame = pd.DataFrame.from_records(rows)
    frame[key] = pd.Series(ids, dtype="str")
    return frame


def _load_sweep_records(sweep_dir: Path | None, refs: list[RunRef]) -> tuple[list[_Loaded], pd.DataFrame]:
    """The runs of one sweep and their curves (keyed by run dir name in `_name`), from the cache
    for runs whose files did not change."""
    cached, cached_curves = read_cache(sweep_dir) if sweep_dir else ({}, None)
    loaded, cache_rows, fresh_rows, fresh_ids, hits = [], [], [], [], []
    for ref in refs:
        name = _cache_name(ref)
        key, last_write = fingerprint(ref.run_dir)
        hit = cached.get(name)
        if hit is not None and hit["fingerprint"] == key and cached_curves is not None:
            record = RunRecord(**json.loads(hit["record"]), metrics=[])
            hits.append(name)
            cache_rows.append(hit)
        else:
            record = read_run(ref.run_dir)
            fresh_rows += record.metrics
            fresh_ids += [name] * len(record.metrics)
            kept = {k: v for k, v in dataclasses.asdict(record).items() if k != "metrics"}
            cache_rows.append({"name": name, "fingerprint": key, "record": json.dumps(kept)})
        loaded.append(_Loaded(ref, record, last_write))
    # Empty frames would turn int columns into floats in concat: leave them out.
    frames = [_metrics_frame(fresh_rows, "_name", fresh_ids)] if fresh_rows or not hits else []
    if hits:
        frames.append(cached_curves[cached_curves["_name"].isin(hits)])
    curves = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    changed = len(hits) != len(refs) or len(cached) != len(refs)
    if sweep_dir is not None and changed and _is_whole_sweep(sweep_dir, refs):
        write_cache(sweep_dir, pd.DataFrame(cache_rows), curves)
    return loaded, curves


def _cache_name(ref: RunRef) -> str:
    """How the cache (and the curves, until they get run ids) name a run: its dir within the sweep."""
    return ref.run_dir.name if ref.sweep_dir else str(ref.run_dir)


def _is_whole_sweep(sweep_dir: Path, refs: list[RunRef]) -> bool:
    # Loading one job of a sweep must not shrink the sweep's cache to that job.
    on_disk = {child.name for child in _child_dirs(sweep_dir) if is_run_dir(child)}
    return on_disk <= {ref.run_dir.name for ref in refs}


def _run_ids(run_dirs: list[Path]) -> list[str]:
    """Short unique names: the job dir name within one sweep, else the path below the common root."""
    if len(run_dirs) == 1:
        return [run_dirs[0].name]
    root = Path(os.path.commonpath([str(p.parent) for p in run_dirs]))
    return [str(p.relative_to(root)) for p in run_dirs]


def _clean_curves(curves: pd.DataFrame) -> pd.DataFrame:
    # A restart from a checkpoint can log an epoch twice: the later line is the one continued.
    curves = curves.drop_duplicates(["run", "epoch"], keep="last")
    numeric = [
        c for c in curves.columns if c not in ("run", "epoch") and pd.api.types.is_float_dtype(curves[c])
    ]
    # The spec writes non-finite values as null; treat a stray inf the same way.
    curves[numeric] = curves[numeric].where(np.isfinite(curves[numeric]))
    return curves


def _problem_reasons(item: _Loaded, status: str, epochs_done: int) -> list[str]:
    record, reasons = item.record, list(item.record.notes)
    if record.truncated and status not in ("running", "damaged"):
        reasons.append("metrics.jsonl: truncated last line dropped")
    if status == "failed":
        reasons.append(f"failed: {(record.summary or {}).get('error') or 'no error message'}")
    elif status == "diverged":  # why, where the run says (sweeper/stopping.py)
        why = (record.summary or {}).get("stop_reason")
        reasons.append(f"diverged at epoch {epochs_done}" + (f": {why}" if why else ""))
    elif status == "interrupted":
        reasons.append(
            "interrupted: its process ended without a summary.json; a rerun into its sweep dir resumes it"
        )
    elif status == "stalled":
        reasons.append(
            "stalled: no summary.json, and nothing written for a long time (killed on another node, or hung)"
        )
    return reasons


def _meta_row(item: _Loaded, status: str, config: dict) -> dict:
    job, summary = item.record.job or {}, item.record.summary or {}
    overrides = job.get("overrides") or list(item.ref.overrides)
    # The resolved trainer.threads; older records have only torch_threads, read at the run's end.
    threads = summary.get("threads", summary.get("torch_threads"))
    row = {
        "status": status,
        "job_num": job.get("job_num") if isinstance(job.get("job_num"), int) else item.ref.job_num,
        "overrides": " ".join(overrides),
        "n_params": summary.get("n_params"),
        "receptive_field_px": summary.get("receptive_field_px"),
        **_image_counts(summary, config),
        "time_s": summary.get("time_s"),
        "fused_trials": summary.get("fused_trials"),  # time_s is then its group's
        "error": summary.get("error"),
        "host": summary.get("host") or job.get("host"),
        "slurm_job_id": job.get("slurm_job_id") or summary.get("slurm_job_id"),
        "slurm_array_job_id": job.get("slurm_array_job_id"),
        "slurm_array_task_id": job.get("slurm_array_task_id"),
        "restarts": job.get("restarts"),
        "started_at": job.get("started_at"),
        "finished_at": summary.get("finished_at"),
        "device": summary.get("device"),
        "threads": threads if isinstance(threads, int) and not isinstance(threads, bool) else None,
        "cpu_count": summary.get("cpu_count"),
        "torch_threads": summary.get("torch_threads"),
        "run_dir": str(item.ref.run_dir),
        "sweep_dir": str(item.ref.sweep_dir) if item.ref.sweep_dir else None,
    }
    for name, version in (summary.get("versions") or {}).items():
        row[f"versions.{name}"] = version
    return row


def threads_vary_on_cpu(runs: pd.DataFrame) -> bool:
    """Whether the CPU runs ran on different thread counts: a CPU convolution reduces in another
    order per thread count, so their numbers differ in the last bits and then more (the same
    config at 1 and 2 threads is not one configuration). A GPU run's numbers do not depend on it."""
    if "threads" not in runs or "device" not in runs:
        return False
    return runs.loc[runs["device"] == "cpu", "threads"].nunique(dropna=True) > 1


def _image_counts(summary: dict, config: dict) -> dict:
    """n_train and n_test: the summary's, or, for a run without one (running, interrupted), what
    its (flattened) config says it trains and evaluates on (an accuracy's noise depends on them)."""
    full_train = full_test = None
    if not (summary.get("n_train") and summary.get("n_test")):  # a run without a summary yet
        from sweeper.datasets import TORCHVISION  # imports torch: only for such a run

        release = TORCHVISION.get(config.get("data.name"))  # its official train and test sizes
        full_train, full_test = release.sizes if release else (None, None)
    n_train = (
        summary.get("n_train")
        or config.get("data.train_size")
        or config.get("data.generated_train")
        or full_train
    )
    n_test = summary.get("n_test") or config.get("data.generated_test") or full_test
    counts = {"n_train": n_train, "n_test": n_test}
    if "n_val" in summary:  # the validation split's size (0: none); an accuracy's noise depends on it
        counts["n_val"] = summary["n_val"]
    return counts


SUMMARY_METRICS = (
    "final_train_loss",
    "final_train_acc",
    "final_test_loss",
    "final_test_acc",
    "best_test_acc",
    "best_test_acc_epoch",
    "min_test_loss",
    "min_test_loss_epoch",
    "min_train_loss",
    "min_train_loss_epoch",
)
# summary.json's reductions of a metrics-line column: final_<split>_<m>, best_val_acc(_epoch), ...
SUMMARY_METRIC = re.compile(r"^(final|best|min)_(train|val|test)_[a-z0-9_]+$")


def _fill_from_summary(runs: pd.DataFrame, loaded: list[_Loaded], ids: list[str]) -> pd.DataFrame:
    """Runs without readable curves (metrics.jsonl lost) still get summary.json's numbers."""
    by_id = dict(zip(ids, loaded, strict=True))
    named = (k for it in loaded for k in (it.record.summary or {}) if SUMMARY_METRIC.match(k))
    for column in dict.fromkeys([*SUMMARY_METRICS, *named]):
        values = [(by_id[r].record.summary or {}).get(column) for r in runs["run"]]
        dtype = "Int64" if column.endswith("_epoch") else "float64"
        from_summary = pd.Series([np.nan if v is None else v for v in values], index=runs.index).astype(dtype)
        runs[column] = from_summary if column not in runs else runs[column].astype(dtype).fillna(from_summary)
    return runs


def _order_columns(runs: pd.DataFrame, varied: list[str], config_keys: list[str]) -> pd.DataFrame:
    """run, status, the varied keys, the reduced metrics, run metadata, constant config, paths."""
    first = ["run", "status", *varied, "epochs_done"]
    metrics = sorted(
        (c for c in runs.columns if c.startswith(("final_", "best_", "min_"))),
        key=lambda c: (not c.startswith("final_"), c),
    )
    rest_config = [k for k in config_keys if k not in varied]
    last = ["run_dir", "sweep_dir"]
    placed = set(first) | set(metrics) | set(rest_config) | set(last)
    middle = [c for c in runs.columns if c not in placed]
    return runs[first + metrics + middle + rest_config + last]


@dataclass(eq=False)  # frames do not compare with ==
class Sweep:
    """What load_sweep returns. `runs` and `curves` are plain DataFrames: filter them freely."""

    runs: pd.DataFrame
    curves: pd.DataFrame
    varied: list[str]
    config_keys: list[str]
    problems: list[tuple[str, str]]
    seed_key: str = SEED_KEY
    _npz_cache: dict = field(default_factory=dict, repr=False)

    @property
    def split(self) -> str:
        """The split the sweep selects on: "val" when its runs hold a validation split out
        (data.val_size), else "test". Test is then shown alongside, never selected on."""
        return diagnostics.held_out_split(self.runs)

    @property
    def selection_metric(self) -> str:
        """What ranking and the best configuration read by default: final_val_acc or final_test_acc."""
        return f"final_{self.split}_acc"

    @property
    def group_keys(self) -> list[str]:
        """The varied keys that define a configuration: all but the seed."""
        return [k for k in self.varied if k != self.seed_key]

    def subset(self, where: dict) -> Sweep:
        """The runs whose config matches `where`, e.g. {"model.channels": 32, "lr": 0.1}."""
        runs = select_rows(self.runs, where)
        curves = self.curves[self.curves["run"].isin(runs["run"])]
        return dataclasses.replace(self, runs=runs, curves=curves)

    def rank(self, metric: str | None = None, statuses: Sequence[str] = RESULTS) -> pd.DataFrame:
        """diagnostics.rank_configs by `metric` (default: selection_metric) over the runs of
        `statuses` (None: every status); a damaged run is never ranked."""
        runs = self.runs[self.runs["status"] != "damaged"]
        return diagnostics.rank_configs(
            runs, metric or self.selection_metric, self.group_keys, statuses=statuses
        )

    def distributions(
        self, runs: Iterable[str] | None = None, epochs: Iterable[int] | None = None
    ) -> pd.DataFrame:
        """Per-sample loss histograms from losses.npz, read on demand: losses.DISTRIBUTION_DTYPES's
        columns; bin 0 = exact zeros, 1 = (0, 1e-8), then the log-spaced bins, last = >= 1e3."""
        dists = self._npz_frames(runs, 0, empty_distributions())
        if epochs is not None:
            dists = dists[dists["epoch"].isin(list(epochs))]
        return dists.reset_index(drop=True)

    def loss_quantiles(self, runs: Iterable[str] | None = None) -> pd.DataFrame:
        """Per-sample loss quantiles and mean: run, epoch, split, mean, q0.01 ... q0.99."""
        return self._npz_frames(runs, 1, pd.DataFrame(columns=["run", "epoch", "split", "mean"]))

    def _npz_frames(self, runs: Iterable[str] | None, which: int, empty: pd.DataFrame) -> pd.DataFrame:
        """The runs' histograms (which=0) or quantiles (1), concatenated; `empty` when none has any."""
        names = list(self.runs["run"]) if runs is None else [str(r) for r in runs]
        frames = [frame for run in names if (frame := self._npz(run)[which]) is not None]
        return pd.concat(frames, ignore_index=True) if frames else empty

    def _npz(self, run: str) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
        if run not in self._npz_cache:
            run_dir = self.runs.loc[self.runs["run"] == run, "run_dir"]
            if run_dir.empty:
                raise KeyError(f"no run {run!r} in this sweep")
            hist, quantiles, reason = read_losses(Path(run_dir.iloc[0]) / "losses.npz", run)
            reason = reason or self._losses_gap(run, hist)
            if reason:
                # Read on demand, so named when first read: the run's numbers come from its other
                # files and stand; only its histograms are lost.
                warnings.warn(f"run {run}: {reason}", stacklevel=4)
                if (run_dir.iloc[0], reason) not in self.problems:
                    self.problems.append((run_dir.iloc[0], reason))
            self._npz_cache[run] = (hist, quantiles)
        return self._npz_cache[run]

    def _losses_gap(self, run: str, hist: pd.DataFrame | None) -> str | None:
        """Epochs a completed (or stopped_early) run should have kept in losses.npz (its
        trainer.sample_loss_epochs and its last epoch, as sweeper.train keeps them) that the file
        lacks: the file was deleted or replaced after the run (a resume would have rewritten it whole)."""
        row = self.runs.loc[self.runs["run"] == run].iloc[0]
        wanted, epochs = row.get("trainer.sample_loss_epochs"), row.get("trainer.epochs")
        if row["status"] not in RESULTS or not (
            isinstance(wanted, tuple) and isinstance(epochs, (int, np.integer))
        ):
            return None
        done = int(row["epochs_done"])
        expected = {int(e) for e in wanted if isinstance(e, int) and 1 <= e <= min(done, epochs)}
        expected |= {int(epochs)} if done >= epochs else {done} if row["status"] == "stopped_early" else set()
        have = set() if hist is None else set(hist["epoch"].unique().tolist())
        lost = sorted(expected - have)
        if not lost:
            return None
        shown = ", ".join(map(str, lost[:10])) + (" ..." if len(lost) > 10 else "")
        if hist is None:
            return damaged("losses.npz", f"missing (trainer.sample_loss_epochs keeps epochs {shown})")
        return damaged("losses.npz", f"epochs {shown} missing (trainer.sample_loss_epochs keeps them)")


def select_rows(frame: pd.DataFrame, where: dict) -> pd.DataFrame:
    """Rows whose columns equal the given values; a missing value (None/NaN) matches missing."""
    mask = pd.Series(True, index=frame.index)
    for key, value in where.items():
        column = frame[key]
        if is_missing(value):
            mask &= column.isna()
        elif isinstance(value, tuple):  # `column == tuple` would compare element-wise
            mask &= column.map(lambda v, value=value: v == value).astype(bool)
        else:
            mask &= (column == value).fillna(False).astype(bool)
    return frame[mask]


def load_sweep(paths: str | os.PathLike | Iterable[str | os.PathLike], seed_key: str = SEED_KEY) -> Sweep:
    """Load run dirs, sweep dirs or folders of them into a Sweep. Damaged, failed, diverged,
    interrupted, stalled and missing runs are listed in `Sweep.problems`; a run without a readable
    config.json cannot be placed in the sweep and is left out of `runs`. Raises FileNotFoundError
    for a path that is not a directory, NoRunsFound if none holds a run."""
    refs, missing = discover(paths)
    if not refs:
        shown = paths if isinstance(paths, (str, os.PathLike)) else ", ".join(map(str, paths))
        raise NoRunsFound(f"no run records under {shown}")
    by_sweep: dict[Path | None, list[RunRef]] = {}
    for ref in refs:
        by_sweep.setdefault(ref.sweep_dir, []).append(ref)
    loaded, curve_frames = [], {}
    for sweep_dir, sweep_refs in by_sweep.items():
        items, curve_frames[sweep_dir] = _load_sweep_records(sweep_dir, sweep_refs)
        loaded += items
    loaded.sort(key=lambda it: (str(it.ref.sweep_dir), *_dir_sort_key(it.ref.run_dir)))
    ids = _run_ids([it.ref.run_dir for it in loaded])
    # The curves know a run by its dir name within its sweep (the cache's key): give them run ids.
    for sweep_dir, frame in curve_frames.items():
        names = {
            _cache_name(it.ref): run
            for it, run in zip(loaded, ids, strict=True)
            if it.ref.sweep_dir == sweep_dir
        }
        frame.insert(0, "run", frame.pop("_name").map(names).astype("str"))
    return _assemble(loaded, ids, pd.concat(curve_frames.values(), ignore_index=True), missing, seed_key)


def _assemble(
    loaded: list[_Loaded], ids: list[str], curves: pd.DataFrame, missing: list[MissingJob], seed_key: str
) -> Sweep:
    problems = []
    placed = [(it, run) for it, run in zip(loaded, ids, strict=True) if it.record.config is not None]
    flat = [renamed(flatten_config(it.record.config)) for it, _ in placed]
    config_keys = merged_key_order(list(row) for row in flat)
    flat_by_run = {run: row for (_, run), row in zip(placed, flat, strict=True)}
    curves = curves[curves["run"].isin([run for _, run in placed])]
    curves = _clean_curves(curves)

    order = {run: i for i, run in enumerate(ids)}
    curves = curves.sort_values(["run", "epoch"], key=lambda s: s.map(order) if s.name == "run" else s)
    curves = diagnostics.add_gaps(curves.reset_index(drop=True))
    reduced = diagnostics.reduce_curves(curves)

    epoch_time = (
        curves.groupby("run")["epoch_time_s"].max() if "epoch_time_s" in curves else pd.Series(dtype=float)
    )
    rows, keep = [], []
    for item, run in zip(loaded, ids, strict=True):
        done = int(reduced.loc[run, "epochs_done"]) if run in reduced.index else 0
        slowest_epoch_s = float(epoch_time.get(run, math.nan))
        status = run_status(item.ref.run_dir, item.record, item.last_write, slowest_epoch_s)
        reasons = _problem_reasons(item, status, done)
        problems += [(str(item.ref.run_dir), reason) for reason in reasons]
        if item.record.config is not None:
            rows.append({"run": run, **_meta_row(item, status, flat_by_run[run])})
            keep.append(run)
    for job in missing:
        shown = " ".join(job.overrides)
        problems.append((str(job.run_dir), f"missing: listed in sweep.json ({shown}) but no run record"))

    runs = pd.DataFrame(
        {k: typed_column([r.get(k) for r in rows]) for k in dict.fromkeys(k for r in rows for k in r)}
    )
    if runs.empty:  # no run has a readable config: an empty table, the reasons are in problems
        runs = pd.DataFrame(
            {c: pd.Series([], dtype="str") for c in ("run", "status", "run_dir", "sweep_dir")}
        )
    for key in config_keys:
        runs[key] = typed_column(fill_older_records(key, flat))
    runs = runs.merge(reduced, left_on="run", right_index=True, how="left")
    runs["epochs_done"] = runs["epochs_done"].fillna(0).astype("int64")
    runs = _fill_from_summary(runs, [it for it, _ in placed], keep)
    varied = varied_keys(runs, config_keys) + (["threads"] if threads_vary_on_cpu(runs) else [])
    runs = _order_columns(runs, varied, config_keys).reset_index(drop=True)
    curves = curves.merge(runs[["run", *varied]], on="run", how="left")
    curves = curves[["run", *varied, *[c for c in curves.columns if c not in varied and c != "run"]]]
    return Sweep(runs, curves, varied, config_keys, problems, seed_key)

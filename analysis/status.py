"""Where a sweep's jobs stand (`python -m analysis status SWEEP_DIR`): sweeper.sweep.job_state's
statuses, plus `damaged` (record files damaged, named in its row), `stalled` (see run_status),
`missing` (listed in sweep.json, no record: not started yet, or lost) and `submitted` (such a job
handed to SLURM: queued, or ended before it started). Reads only job.json, summary.json,
config.json and metrics.jsonl, so it is quick on a sweep in progress.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from analysis.discovery import discover
from analysis.records import RunRecord, fingerprint, read_run
from sweeper import submitted
from sweeper.sweep import counted, job_state

# A run without summary.json that has written nothing for this long is `stalled`.
STALE_AFTER_S = 3600.0
STALE_EPOCHS = 5  # ... or for this many of its slowest epochs, whichever is longer


def run_status(
    run_dir: Path, record: RunRecord, last_write: float, slowest_epoch_s: float, now: float | None = None
) -> str:
    """The run's state as sweeper.sweep.job_state reads it from its record (completed, ...,
    interrupted: its process on this host is gone, a rerun resumes it; running), `damaged` when
    the analysis finds its files damaged, and `stalled` for a run still `running` that has
    written nothing for max(1 h, 5 slowest epochs): killed on another node, or hung."""
    if record.damage:
        return "damaged"
    state, _ = job_state(run_dir)
    if state != "running":
        return state
    now = time.time() if now is None else now
    limit_s = max(STALE_AFTER_S, STALE_EPOCHS * (slowest_epoch_s if math.isfinite(slowest_epoch_s) else 0))
    return "stalled" if now - last_write > limit_s else "running"


# The table's order: what needs a look first; stopped_early (ended by its trainer.early_stopping)
# is a result, as a completed run is.
STATUS_ORDER = ("damaged", "failed", "diverged", "interrupted", "stalled", "running", "submitted", "missing")
STATUS_ORDER += ("stopped_early", "completed")


def _planned_epochs(config: object, summary: dict | None) -> int | None:
    if summary and isinstance(summary.get("epochs"), int):
        return summary["epochs"]
    trainer = config.get("trainer") if isinstance(config, dict) else None
    epochs = trainer.get("epochs") if isinstance(trainer, dict) else None
    return epochs if isinstance(epochs, int) else None


def _job_row(run_dir: Path, sweep_dir: Path | None, job_num: int | None, sweep_overrides, now: float) -> dict:
    record = read_run(run_dir)
    job, summary, config, rows = record.job or {}, record.summary, record.config, record.metrics
    epoch_times = [r["epoch_time_s"] for r in rows if isinstance(r.get("epoch_time_s"), (int, float))]
    _, last_write = fingerprint(run_dir)
    status = run_status(run_dir, record, last_write, max(epoch_times, default=float("nan")), now)
    done = max((r["epoch"] for r in rows), default=0)
    planned = _planned_epochs(config, summary)
    return {
        "sweep": str(sweep_dir) if sweep_dir else "",
        "job": job.get("job_num") if isinstance(job.get("job_num"), int) else job_num,
        "status": status,
        "epochs": f"{done}/{planned}" if planned else str(done),
        "age_s": now - last_write if last_write else None,
        "slurm_id": _slurm_id(job, summary),
        "host": job.get("host"),
        "overrides": " ".join(job.get("overrides") or sweep_overrides),
        # what went wrong, or why the run ended before trainer.epochs (sweeper/stopping.py)
        "error": "; ".join(record.damage)
        or (summary or {}).get("error")
        or (summary or {}).get("stop_reason"),
        "run_dir": str(run_dir),
    }


def _slurm_id(job: dict, summary: dict | None) -> str | None:
    """The id squeue shows and scancel takes: ARRAY_TASK for an array task (its own SLURM_JOB_ID
    is another number, and the array's id alone names every task), else the job id."""
    if job.get("slurm_array_job_id"):
        return f"{job['slurm_array_job_id']}_{job.get('slurm_array_task_id')}"
    return job.get("slurm_job_id") or (summary or {}).get("slurm_job_id")


def job_table(
    paths: str | os.PathLike | Iterable[str | os.PathLike], now: float | None = None
) -> pd.DataFrame:
    """One row per job of the given sweep(s) or run dir(s), missing jobs included."""
    now = time.time() if now is None else now
    refs, missing = discover(paths)
    rows = [_job_row(r.run_dir, r.sweep_dir, r.job_num, r.overrides, now) for r in refs]
    slurm = {m.sweep_dir: submitted.slurm_ids(m.sweep_dir) for m in missing}
    rows += [
        {
            "sweep": str(m.sweep_dir),
            "job": m.job_num,
            # no record yet, but handed to SLURM: queued (or ended before it started)
            "status": "submitted" if m.job_num in slurm[m.sweep_dir] else "missing",
            "epochs": "",
            "slurm_id": slurm[m.sweep_dir].get(m.job_num),
            "overrides": " ".join(m.overrides),
            "run_dir": str(m.run_dir),
        }
        for m in missing
    ]
    columns = ["sweep", "job", "status", "epochs", "age_s", "slurm_id", "host", "overrides", "error"]
    columns.append("run_dir")
    table = pd.DataFrame(rows, columns=columns)
    table["job"] = table["job"].astype("Int64")
    table["age_s"] = table["age_s"].astype("float64")
    return table.sort_values(["sweep", "job", "run_dir"], na_position="last", kind="stable").reset_index(
        drop=True
    )


def _age(seconds: float) -> str:
    if pd.isna(seconds):
        return ""
    for limit, unit, scale in ((120, "s", 1), (7200, "m", 60), (172800, "h", 3600)):
        if seconds < limit:
            return f"{seconds / scale:.0f}{unit}"
    return f"{seconds / 86400:.0f}d"


def _job_label(sweep: str, job, run_dir: str, multi: bool) -> str:
    """The job number; a single run's dir name; prefixed by the sweep's dir name when several."""
    label = Path(run_dir).name if pd.isna(job) else str(job)
    return f"{Path(sweep).name}/{label}" if multi and sweep else label


def _common_overrides(overrides: pd.Series) -> list[str]:
    token_sets = [set(o.split()) for o in overrides if o]
    if not token_sets:
        return []
    common = set.intersection(*token_sets)
    return [t for t in overrides[overrides != ""].iloc[0].split() if t in common]


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def status_counts(statuses: pd.Series, ordered: bool = False) -> str:
    """ "13 completed, 1 diverged": most common first, or (ordered) in STATUS_ORDER."""
    counts = statuses.value_counts()
    if ordered:
        rank = {s: i for i, s in enumerate(STATUS_ORDER)}
        counts = counts.loc[sorted(counts.index, key=lambda s: rank.get(s, len(rank)))]
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def format_job_table(
    table: pd.DataFrame, width: int | None = None, max_rows: int | None = None, show_all: bool = False
) -> str:
    """A one-screen text table. When the jobs do not fit, completed ones are left out first."""
    size = shutil.get_terminal_size((120, 40))
    width = width or size.columns
    max_rows = max_rows or max(10, size.lines - 6)
    lines = []
    for sweep, jobs in table.groupby("sweep", sort=False):
        tail = f": {counted(len(jobs), 'job')}: {status_counts(jobs['status'], ordered=True)}"
        name = sweep or "(single runs)"
        room = max(20, width - len(tail))
        lines.append((name if len(name) <= room else "…" + name[-(room - 1) :]) + tail)  # keep the path's end
    shown = table
    hidden = 0
    if not show_all and len(table) > max_rows:
        unfinished = table[table["status"] != "completed"]
        room = max(0, max_rows - len(unfinished))
        shown = pd.concat([unfinished, table[table["status"] == "completed"].head(room)]).sort_index()
        shown = shown.head(max_rows)
        hidden = len(table) - len(shown)
    # Overrides every job shares (data=..., trainer.epochs=...) are said once, above the table.
    common = _common_overrides(table["overrides"]) if len(table) > 1 else []
    if common:
        lines.append(_fit(f"common overrides: {' '.join(common)}", width))
    multi = table["sweep"].nunique() > 1
    cells = pd.DataFrame(
        {
            "job": [
                _job_label(s, j, d, multi)
                for s, j, d in zip(shown["sweep"], shown["job"], shown["run_dir"], strict=True)
            ],
            "status": shown["status"].tolist(),
            "epochs": shown["epochs"].tolist(),
            "last write": [_age(a) for a in shown["age_s"]],
            "slurm": ["" if pd.isna(v) else str(v) for v in shown["slurm_id"]],
            "overrides": [
                " ".join(t for t in o.split() if t not in common) + ("" if pd.isna(e) else f"  [{e}]")
                for o, e in zip(shown["overrides"], shown["error"], strict=True)
            ],
        }
    )
    if (cells["slurm"] == "").all():
        cells = cells.drop(columns="slurm")
    widths = {c: max(len(c), *(len(v) for v in cells[c])) if len(cells) else len(c) for c in cells.columns}
    fixed = sum(widths[c] + 2 for c in cells.columns if c != "overrides")
    widths["overrides"] = max(20, width - fixed)
    for row in [cells.columns, *cells.itertuples(index=False)]:  # the header, then the jobs
        values = [_fit(v, widths[c]).ljust(widths[c]) for c, v in zip(cells.columns, row, strict=True)]
        lines.append("  ".join(values).rstrip())
    if hidden:
        lines.append(f"… {counted(hidden, 'completed job')} not shown (--all lists every job)")
    return "\n".join(lines)

"""One run dir's record files (docs/run-record.md), read and checked: anything a crash cannot
leave (a file cut short, garbage, another shape of JSON, a value of the wrong type, a summary.json
that disagrees with metrics.jsonl) is damage, named "damaged: <file>: <what>"."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from sweeper.processes import Damaged, json_object
from sweeper.rundir import RECORD_FILES
from sweeper.rundir import STATUSES as SUMMARY_STATES
from sweeper.runlog import NOT_JSON, parsed_line

# What load_sweep parses up front, the analysis cache's key (losses.npz is read on demand,
# steps.jsonl by the LR range test alone).
CACHED_FILES = tuple(name for name in RECORD_FILES if name.endswith(".json") or name == "metrics.jsonl")


def damaged(name: str, what: str) -> str:
    """The one way a damaged record file is named, in problems and in `status`."""
    return f"damaged: {name}: {what}"


def read_object(path: Path) -> tuple[dict | None, str | None]:
    """A record file that must hold one JSON object (processes.json_object): (object, None), (None,
    None) when absent, or (None, "damaged: <file>: <what>")."""
    try:
        return json_object(path), None
    except Damaged as err:
        cause = err.cause
        if isinstance(cause, OSError):
            what = f"unreadable: {cause.strerror}"
        elif isinstance(cause, json.JSONDecodeError):
            what = f"not valid JSON ({cause.msg}, line {cause.lineno})"
        else:
            what = "not valid JSON (not UTF-8)" if isinstance(cause, ValueError) else "not a JSON object"
        return None, damaged(path.name, what)


def _bad_value(row: dict) -> str | None:
    """Why a metrics line is not what the trainer writes: an int epoch, numbers or null for the rest."""
    epoch = row.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        return f"epoch is {json.dumps(epoch)}, not an epoch number"
    for key, value in row.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"{key} is {json.dumps(value)}, not a number"
    return None


def json_lines(path: Path, check) -> tuple[list[dict], list[tuple[int, str]], bool] | None:
    """A .jsonl record's lines as runlog.parsed_line reads them: (rows, bad, truncated); None when
    the file is absent. An unterminated last line that is not JSON is a write cut short (a crash,
    or a read racing the writer): dropped, `truncated` True. Any other bad line, or one `check(row)`
    faults (it returns why), is in `bad` as (line number, why), and the lines after it are read on."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    lines = data.split(b"\n")
    rows, bad, truncated = [], [], False
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        row, why = parsed_line(path.name, line)
        if why == NOT_JSON and i == len(lines) - 1:
            truncated = True
            continue
        why = why or check(row)
        if why is None:
            rows.append(row)
        else:
            bad.append((i + 1, why))
    return rows, bad, truncated


def read_metrics(path: Path) -> tuple[list[dict], list[str], bool]:
    """metrics.jsonl as json_lines reads it: (rows, notes, truncated), a bad line dropped with a note."""
    try:
        rows, bad, truncated = json_lines(path, _bad_value) or ([], [], False)
    except OSError as err:
        return [], [f"metrics.jsonl unreadable: {err.strerror}"], False
    return rows, [damaged("metrics.jsonl", f"line {n}: {why}, dropped") for n, why in bad], truncated


FINAL_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)):
        return False
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def summary_disagreement(summary: dict, rows: list[dict], truncated: bool) -> str | None:
    """Where summary.json and metrics.jsonl disagree: "damaged: <file>: <what>", else None. The
    trainer writes the summary last from metrics.jsonl's complete lines (epochs_done, final_*), so a
    difference means one file was changed after the run ended."""
    done = summary.get("epochs_done")
    if isinstance(done, int) and not isinstance(done, bool) and done != len(rows):
        where = "metrics.jsonl" if truncated or done > len(rows) else "summary.json"
        cut = "its last line is cut short; " if truncated else ""
        return damaged(where, f"{cut}summary.json counts {done} epochs, metrics.jsonl has {len(rows)}")
    if not rows:
        return None
    last = rows[-1]
    for key in FINAL_METRICS:
        name = f"final_{key}"
        if name in summary and key in last and not _same(summary[name], last[key]):
            return damaged(
                "summary.json",
                f"{name} is {json.dumps(summary[name])}, metrics.jsonl's epoch {last['epoch']} says "
                f"{json.dumps(last[key])}",
            )
    return None


@dataclass
class RunRecord:
    """The parsed files of one run dir. `notes` are problems to list; `damage` those among them that
    leave the run's numbers unsupported (its status is then `damaged`)."""

    config: dict | None
    job: dict | None
    summary: dict | None
    metrics: list[dict]
    notes: list[str]
    truncated: bool = False
    damage: list[str] = field(default_factory=list)


def option_names(config: dict, run_dir: Path) -> dict:
    """`config` with a `name` for each component (a section with a `_target_`) that has none: the
    option Hydra composed it from (.hydra/hydra.yaml's runtime choices: a user's conf/model/mlp.yaml
    is `mlp`). One set by `_target_` alone keeps none, and is shown by its class name."""
    unnamed = [k for k, v in config.items() if isinstance(v, dict) and "_target_" in v and "name" not in v]
    if not unnamed:
        return config
    try:
        import yaml

        hydra = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())
        choices = hydra["hydra"]["runtime"]["choices"]
    except (OSError, ValueError, KeyError, TypeError, ImportError, yaml.YAMLError):
        return config  # no Hydra record (written by hand, or set aside): class names stand
    named = dict(config)
    for key in unnamed:
        choice = choices.get(key) if isinstance(choices, dict) else None
        if isinstance(choice, str) and choice:
            named[key] = {**config[key], "name": choice}
    return named


def read_run(run_dir: Path) -> RunRecord:
    notes, damage = [], []
    config, note = read_object(run_dir / "config.json")
    if config is None:
        # config.json is written before anything else: a run dir without it lost it.
        notes.append(note or "config.json missing")
    else:
        config = option_names(config, run_dir)
    job, note = read_object(run_dir / "job.json")
    if note:
        notes.append(note)
    summary, summary_note = read_object(run_dir / "summary.json")
    status = (summary or {}).get("status")
    if summary is not None and status not in SUMMARY_STATES:
        what = f"status {json.dumps(status)}, not one of {', '.join(SUMMARY_STATES)}"
        summary_note, summary = damaged("summary.json", "no status" if status is None else what), None
    if summary_note:
        notes.append(summary_note)
        damage.append(summary_note)  # absent means still running; a damaged one ends nothing
    elif summary is None and note:
        damage.append(note)  # without job.json's pid, a dead run would look alive
    elif summary is not None and job is None and not note:
        # job.json is written at the start, before any epoch: an ended run without one lost it.
        notes.append(damaged("job.json", "missing"))
    rows, metric_notes, truncated = read_metrics(run_dir / "metrics.jsonl")
    damage += [n for n in metric_notes if n.startswith("damaged:")]
    unsupported = None
    if summary is not None and (run_dir / "metrics.jsonl").exists():
        unsupported = summary_disagreement(summary, rows, truncated)
    elif summary is not None and summary.get("epochs_done"):  # the curve its numbers come from is gone
        unsupported = damaged(
            "metrics.jsonl", f"missing (summary.json counts {summary['epochs_done']} epochs)"
        )
    if unsupported:
        metric_notes.append(unsupported)
        damage.append(unsupported)
    return RunRecord(config, job, summary, rows, notes + metric_notes, truncated, damage)


def fingerprint(run_dir: Path) -> tuple[str, float]:
    """(size and mtime of each record file, newest mtime): the cache key and a sign of life."""
    parts, newest = [], 0.0
    for name in CACHED_FILES:
        try:
            st = os.stat(run_dir / name)
        except OSError:
            parts.append("-")
            continue
        parts.append(f"{st.st_size}:{st.st_mtime_ns}")
        newest = max(newest, st.st_mtime)
    return "|".join(parts), newest

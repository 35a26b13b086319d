"""Where the run records are: run dirs, sweep dirs (sweep.json or multirun.yaml) and folders of
them, found on disk (docs/run-record.md). Nothing here parses a run's files beyond sweep.json."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from analysis.records import RECORD_FILES, read_object

SWEEP_RECORDS = ("sweep.json", "multirun.yaml")  # either one makes a dir a sweep dir
# Directories that never hold runs (hidden ones, like .hydra, .submitit and our cache, are skipped too).
SKIP_DIRS = frozenset({"report", "sample_losses"})


class NoRunsFound(ValueError):
    """None of the given paths holds a run record."""


@dataclass(frozen=True)
class RunRef:
    """A run dir found on disk, with what its sweep says about it."""

    run_dir: Path
    sweep_dir: Path | None
    job_num: int | None
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class MissingJob:
    """A job listed in sweep.json whose run dir is absent or holds no record."""

    sweep_dir: Path
    job_num: int | None
    run_dir: Path
    overrides: tuple[str, ...]


def is_run_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in RECORD_FILES)


def is_sweep_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in SWEEP_RECORDS)


def newest_sweep(root: Path) -> Path:
    """The sweep dir under `root` (outputs/multirun: <date>/<time>/ or a named one like make demo's
    demo/) whose sweep record was written last. Names do not sort in time order once a sweep dir
    is named, and a report/ dir sorts after its sweep's runs."""
    candidates = [*Path(root).glob("*"), *Path(root).glob("*/*")]
    sweeps = [p for p in candidates if p.is_dir() and is_sweep_dir(p)]
    if not sweeps:
        raise NoRunsFound(f"no sweep dir under {root}: set SWEEP_DIR")

    def written(sweep: Path) -> float:
        return max((sweep / name).stat().st_mtime for name in SWEEP_RECORDS if (sweep / name).is_file())

    return max(sweeps, key=written)


def resolve_dir(raw: str | os.PathLike, bases: Iterable[str | os.PathLike | None]) -> Path:
    """A directory given on a command line or in an environment variable (SWEEP_DIR): an absolute
    one as is, a relative one from the first of `bases` (where the user launched the program, the
    project root) under which it exists; else as given, so that the error names it."""
    path = Path(raw).expanduser()
    if path.is_absolute():
        return path
    for base in bases:
        if base and (Path(base) / path).is_dir():
            return Path(base) / path
    return path


def read_sweep_jobs(sweep_dir: Path) -> list[dict]:
    """The job list of sweep.json ([] when there is none or it is unreadable)."""
    jobs = (read_object(sweep_dir / "sweep.json")[0] or {}).get("jobs")
    return [job for job in jobs if isinstance(job, dict)] if isinstance(jobs, list) else []


def _child_dirs(path: Path) -> list[Path]:
    children = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted((p for p in children if p.name not in SKIP_DIRS), key=_dir_sort_key)


def _dir_sort_key(path: Path) -> tuple:
    # Job dirs are numbers: 2 before 10.
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def _job_num(job: dict, name: str) -> int | None:
    """sweep.json's number of the job, else its dir's name where that is a number."""
    return job["num"] if isinstance(job.get("num"), int) else int(name) if name.isdigit() else None


def _scan_sweep(sweep_dir: Path) -> tuple[list[RunRef], list[MissingJob]]:
    listed = {str(job.get("dir", job.get("num", ""))): job for job in read_sweep_jobs(sweep_dir)}
    refs, missing, seen = [], [], set()
    for child in _child_dirs(sweep_dir):
        if not is_run_dir(child):
            continue
        job = listed.get(child.name, {})
        refs.append(RunRef(child, sweep_dir, _job_num(job, child.name), tuple(job.get("overrides") or ())))
        seen.add(child.name)
    for name, job in listed.items():
        if name not in seen:
            overrides = tuple(job.get("overrides") or ())
            missing.append(MissingJob(sweep_dir, _job_num(job, name), sweep_dir / name, overrides))
    return refs, missing


def _scan(path: Path, depth: int) -> tuple[list[RunRef], list[MissingJob]]:
    if is_run_dir(path):
        parent = path.parent
        if is_sweep_dir(parent):
            refs, _ = _scan_sweep(parent)
            return [r for r in refs if r.run_dir == path], []
        return [RunRef(path, None, None)], []
    if is_sweep_dir(path):
        return _scan_sweep(path)
    refs, missing = [], []
    if depth > 0:  # e.g. outputs/multirun/ or outputs/multirun/<date>/
        for child in _child_dirs(path):
            more_refs, more_missing = _scan(child, depth - 1)
            refs += more_refs
            missing += more_missing
    return refs, missing


def discover(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> tuple[list[RunRef], list[MissingJob]]:
    """Find the run dirs under run dirs, sweep dirs or folders of them (up to 3 levels down).

    Raises FileNotFoundError for a path that is not a directory.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    refs, missing = {}, {}
    for raw in paths:
        path = Path(raw).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(f"{raw}: no such directory")
        found_refs, found_missing = _scan(path, depth=3)
        refs.update((r.run_dir, r) for r in found_refs)
        missing.update((m.run_dir, m) for m in found_missing)
    return list(refs.values()), list(missing.values())

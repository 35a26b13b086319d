"""Is the process a run's job.json names still the one that wrote it? Pids are reused, so a pid
is checked together with its start time (job.json `pid_started`).

Also the reader of a record's JSON objects (job.json, summary.json, sweep.json): json_object says
what is damaged, read_object takes damage as absence.

Torch-free on purpose: the analysis side (status tables) imports it as well as the sweep.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on; None where unknown (not Linux, or no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return stat.rsplit(")", 1)[1].split()


def process_started(pid: int) -> int | None:
    """When the process started (clock ticks since boot, /proc/<pid>/stat field 22); None where
    unknown (not Linux, or no such process). With the pid it names one process: pids are reused."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def _zombie(pid: int) -> bool:
    # A process that has exited but is not reaped yet (state Z) writes nothing any more: the
    # workers of a SIGKILLed pool launcher stay so until init reaps them.
    fields = _stat_fields(pid)
    return fields is not None and fields[0] in ("Z", "X")


def on_this_host(job: dict | None) -> bool:
    """job.json names a process (an int pid) on this host: only then can it be looked at."""
    return (
        isinstance(job, dict)
        and job.get("host") == socket.gethostname()
        and type(job.get("pid")) is int
        and job["pid"] > 0
    )


def pid_alive(pid: int) -> bool:
    """A process of that pid runs on this host (not a zombie); it may be another than the one
    that once had the pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    except (OverflowError, ValueError):  # no such pid can exist
        return False
    return not _zombie(pid)


def alive(job: dict) -> bool:
    """The process job.json names (on this host) still runs, and is the same process."""
    pid = job["pid"]
    if not pid_alive(pid):
        return False
    started = job.get("pid_started")
    return started is None or process_started(pid) == started  # else the pid was reused


class Damaged(Exception):
    """A record file that is there but cannot be what it should be; its text says what is wrong."""


def json_object(path: Path) -> dict | None:
    """The JSON object in `path`, None when there is no such file; Damaged when it cannot be read,
    is not JSON (or not UTF-8), or holds another JSON value than an object."""
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as e:
        raise Damaged(f"cannot be read ({e.strerror or type(e).__name__})") from None
    except ValueError:
        raise Damaged("is not JSON") from None
    if not isinstance(value, dict):
        raise Damaged(f"is not a JSON object (it holds {type(value).__name__} {short(value)})")
    return value


def short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_object(path: Path) -> dict | None:
    """The JSON object a record file holds; None when it is absent or damaged (json_object)."""
    try:
        return json_object(Path(path))
    except Damaged:
        return None


def read_job(run_dir: Path) -> dict | None:
    """The run's job.json; None when it is absent or damaged: then no process can be told to be
    writing the run."""
    return read_object(Path(run_dir) / "job.json")

"""Is the process a run's job.json names still the one that wrote it? Pids are reused, so a pid
is checked together with its start time (job.json `pid_started`). Also the one reader of a
record's JSON objects (json_object). Torch-free: the analysis imports it too.
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
    unknown. With the pid it names one process: pids are reused."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def on_this_host(job: dict | None) -> bool:
    """job.json names a process (an int pid) on this host: only then can it be looked at."""
    return (
        isinstance(job, dict)
        and job.get("host") == socket.gethostname()
        and type(job.get("pid")) is int
        and job["pid"] > 0
    )


def pid_alive(pid: int) -> bool:
    """A process of that pid runs on this host; it may be another than the one that once had it."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):  # none, or no such pid can exist
        return False
    except PermissionError:  # alive, another user's
        pass
    # An exited process not reaped yet (state Z) writes nothing any more: the workers of a
    # SIGKILLed pool launcher stay so until init reaps them.
    fields = _stat_fields(pid)
    return fields is None or fields[0] not in ("Z", "X")


def alive(job: dict) -> bool:
    """The process job.json names (on this host) still runs, and is the same process."""
    started = job.get("pid_started")
    return pid_alive(job["pid"]) and (started is None or process_started(job["pid"]) == started)


class Damaged(Exception):
    """A record file that is there but holds no JSON object. Its text says what is wrong; `cause`
    is the error reading or parsing it (OSError, ValueError), or the value it holds instead."""

    def __init__(self, what: str, cause):
        super().__init__(what)
        self.cause = cause


def json_object(path: Path) -> dict | None:
    """The JSON object in `path`, None when there is no such file; Damaged when it cannot be read,
    is not JSON (or not UTF-8), or holds another JSON value than an object."""
    try:
        value = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        return None
    except OSError as e:
        raise Damaged(f"cannot be read ({e.strerror or type(e).__name__})", e) from None
    except ValueError as e:
        raise Damaged("is not JSON", e) from None
    if not isinstance(value, dict):
        raise Damaged(f"is not a JSON object (it holds {type(value).__name__} {short(value)})", value)
    return value


def short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_object(path: Path) -> dict | None:
    """The JSON object a record file holds; None when it is absent or damaged (json_object)."""
    try:
        return json_object(path)
    except Damaged:
        return None


def read_job(run_dir: Path) -> dict | None:
    """The run's job.json; None when it is absent or damaged: then no process can be told to be
    writing the run."""
    return read_object(Path(run_dir) / "job.json")

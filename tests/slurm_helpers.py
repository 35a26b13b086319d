"""The throw-away SLURM cluster of .ci/slurm/start-slurm.sh, seen from the tests.

The cluster tests run when that cluster answers, either through the caller's environment
(`source .cluster/env.sh`, as .ci/run does) or found in <repo>/.cluster (or $SLURM_LAB_DIR).
They skip otherwise, and fail instead with SWEEPER_REQUIRE_SLURM=1 (set by .ci/run), so that CI
cannot pass without running them. They never submit to a production cluster a login node happens
to answer for, unless SWEEPER_SLURM_TESTS=any says so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import REPO

LAB_CLUSTER = "lab"  # ClusterName in the slurm.conf that start-slurm.sh writes
READY = {"idle", "mixed", "allocated", "completing"}


def _lab_env() -> dict[str, str] | None:
    lab = Path(os.environ.get("SLURM_LAB_DIR") or REPO / ".cluster")
    conf = lab / "etc" / "slurm.conf"
    if not conf.exists():
        return None
    path = f"{lab / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "SLURM_CONF": str(conf), "PATH": path}


def find_cluster() -> tuple[dict[str, str] | None, str]:
    """(environment under which the cluster answers, why not when it is None)."""
    reason = "sinfo is not installed (start one with .ci/slurm/start-slurm.sh)"
    for env in (dict(os.environ), _lab_env()):
        if env is None or shutil.which("sinfo", path=env.get("PATH")) is None:
            continue
        try:
            info = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=15
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            reason = f"sinfo failed: {e}"
            continue
        states = {s.rstrip("*~#!%$@^-") for s in info.stdout.split()}
        if info.returncode != 0 or not states & READY:
            reason = (
                f"no SLURM node ready (sinfo: {(info.stdout + info.stderr).strip()[:200] or 'no answer'})"
            )
            continue
        config = subprocess.run(
            ["scontrol", "show", "config"], env=env, capture_output=True, text=True, timeout=15
        )
        name = next(
            (
                line.split("=", 1)[1].strip()
                for line in config.stdout.splitlines()
                if line.startswith("ClusterName")
            ),
            "",
        )
        if name != LAB_CLUSTER and os.environ.get("SWEEPER_SLURM_TESTS") != "any":
            reason = (
                f"SLURM cluster {name!r} answers but is not the test cluster of .ci/slurm/start-slurm.sh; "
                "SWEEPER_SLURM_TESTS=any runs the tests on it anyway"
            )
            continue
        return env, ""
    return None, reason


def sweep_cmd(env: dict, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m sweeper -m ARGS` as a user types it on the cluster's submit host."""
    return subprocess.run(
        [sys.executable, "-m", "sweeper", "-m", *args],
        cwd=cwd,
        env=_job_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextmanager
def background_sweep(env: dict, cwd: Path, *args: str, log: Path) -> Iterator[subprocess.Popen]:
    """The same, in the background while the block runs (its output goes to `log`). At the end
    of the block the sweep must finish within 300 s, every job completed; it is killed if the
    block fails."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sweeper", "-m", *args],
            cwd=cwd,
            env=_job_env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        yield proc
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    assert re.search(r"\b(\d+) jobs?: \1 completed$", text, re.MULTILINE), text[-4000:]


def _job_env(env: dict) -> dict:
    # the jobs inherit this environment (sbatch --export=ALL): the repo is importable there too
    return {**env, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def slurm(env: dict, *args: str) -> str:
    out = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"{' '.join(args)}: {out.stderr}"
    return out.stdout


def known_job_ids(env: dict) -> set[str]:
    """Every job the controller knows (MinJobAge keeps finished ones), as array or plain ids."""
    return set(slurm(env, "squeue", "-h", "-t", "all", "-o", "%i").split())


def read_json(path: Path):
    return json.loads(path.read_text())


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def wait_until(
    predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None
):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep ended (rc {proc.returncode}) before {what}: {_tail(log)}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: {_tail(log)}")


def _tail(log: Path | None) -> str:
    return log.read_text()[-3000:] if log is not None and log.exists() else ""


def submitit_logs(sweep_dir: Path) -> str:
    """All the text submitit's jobs wrote (their .out and .err files)."""
    return "\n".join(
        p.read_text(errors="replace") for p in sorted((sweep_dir / ".submitit").rglob("*_log.*"))
    )

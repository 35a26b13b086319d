"""The SLURM id each job of a sweep was submitted as (slurm_jobs.json in the sweep dir), written
once sbatch has taken an array, before a job's own job.json exists: so `python -m analysis status`
can name a queued job, and a rerun can see that the earlier submission is still queued.
Torch-free: the analysis imports it.
"""

from __future__ import annotations

import getpass
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from sweeper.runlog import atomic_write

FILE = "slurm_jobs.json"  # {"jobs": {"<job num>": "<ARRAY_TASK or job id>", ...}}


def slurm_ids(sweep_dir: Path) -> dict[int, str]:
    """{job num: SLURM id} of the sweep's submitted jobs; {} when none was submitted to SLURM."""
    try:
        jobs = json.loads((Path(sweep_dir) / FILE).read_text())["jobs"]
        return {int(num): str(job_id) for num, job_id in jobs.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def record(sweep_dir: Path, ids: dict[int, str]) -> None:
    """Add (or replace, for a rerun) these jobs' ids, atomically."""
    jobs = {**slurm_ids(sweep_dir), **ids}
    text = json.dumps({"jobs": {str(k): v for k, v in sorted(jobs.items())}}) + "\n"
    atomic_write(Path(sweep_dir) / FILE, text.encode())


def refuse_if_still_queued(sweep_dir: Path, job_nums: Sequence[int]) -> None:
    """Refuse, in one line, a rerun while the earlier submission of the same jobs is still queued or
    running (two arrays for the same run dirs). Without squeue, or when it fails, it stands aside."""
    known = slurm_ids(sweep_dir)
    earlier = {known[n] for n in job_nums if n in known}
    if not earlier:
        return
    try:  # -r: one line per array task (27_0, 27_1), pending ones included
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i", "-u", getpass.getuser()],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return
    listed = earlier & set(out.split())
    # squeue lists a job until its process exits, after submitit has its result: not refused
    queued = sorted(j for j in listed if not any((Path(sweep_dir) / ".submitit" / j).glob("*_result.pkl")))
    if queued:
        arrays = sorted({job_id.split("_")[0] for job_id in queued})
        print(
            f"error: {len(queued)} job(s) of this sweep are still in SLURM's queue from an earlier submission "
            f"({', '.join(queued[:6])}{', ...' if len(queued) > 6 else ''}): wait until they end, or "
            f"scancel {' '.join(arrays)}, then rerun",
            file=sys.stderr,
        )
        raise SystemExit(2)

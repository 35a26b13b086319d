"""The SLURM id each job of a sweep was submitted as: slurm_jobs.json in the sweep dir.

The SLURM launcher writes it once sbatch has taken an array (hydra_plugins/sweeper_launcher); a
job's own record (job.json) holds its ids only once it starts. So `python -m analysis status`
can name a queued job's id, and a rerun can see that the earlier submission is still queued.
Torch-free on purpose: the analysis side imports it.
"""

from __future__ import annotations

import json
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

"""hydra-submitit-launcher's launchers with two additions, behind the project's SLURM presets.

    python -m sweeper -m hydra/launcher=slurm_gpu_packed model.channels=8,16,32,64 lr=0.1,0.05

* Packing: `hydra.launcher.jobs_per_task=K` puts K grid jobs into each array task, run at once in
  one process each, sharing the task's GPU(s) and CPUs (a small convnet leaves an H100 mostly idle).
* A job that ends without a result (cancelled, killed for memory, out of requeues) is logged with
  the path of its SLURM log instead of aborting the sweep: the sweep callback still prints its
  summary from the run records, which say what happened. A job whose task raised comes back
  failed with its exception, as from Hydra's own launchers.

The rest is upstream's: its parameters, one SLURM array per grid, and submitit's checkpoint hook,
which requeues a preempted or timed-out task (each run resumes from its checkpoint.pt).
"""

# No `from __future__ import annotations`: Hydra's plugin scan executes this module before it is
# in sys.modules, and dataclasses then cannot resolve string annotations.
import contextlib
import io
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, LocalQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

LOST = "lost"  # what a job that produced no result returns to the sweep


@dataclass
class SweeperSlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.sweeper_launcher.launcher.SweeperSlurmLauncher"
    # grid jobs per array task, run at once in one process each, sharing the task's resources
    jobs_per_task: int = 1


@dataclass
class SweeperLocalConf(LocalQueueConf):
    _target_: str = "hydra_plugins.sweeper_launcher.launcher.SweeperLocalLauncher"
    jobs_per_task: int = 1


for name, node in (("sweeper_slurm", SweeperSlurmConf()), ("sweeper_local", SweeperLocalConf())):
    ConfigStore.instance().store(group="hydra/launcher", name=name, node=node, provider="sweeper")

# A call of the launcher for one grid job: (overrides, job_dir_key, job_num, job_id, singletons).
Call = tuple[list[str], str, int, str, dict]


class _Launcher(BaseSubmititLauncher):
    def __init__(self, jobs_per_task: int = 1, **params: Any) -> None:
        if type(jobs_per_task) is not int or jobs_per_task < 1:
            raise ValueError(
                f"hydra.launcher.jobs_per_task={jobs_per_task!r} is invalid: must be an integer >= 1"
            )
        super().__init__(**params)
        self.jobs_per_task = jobs_per_task
        self.launch_dir: str | None = None  # where the sweep was launched from (launch)

    def __call__(self, *call: Any) -> JobReturn:
        # A job imports the user's own modules (a `_target_` of theirs) from the dir the sweep was
        # launched from, as `python -m sweeper` did there: a SLURM task starts wherever sbatch and
        # srun put it. The search path travels in the pickled config loader, --config-dir included.
        if self.launch_dir and self.launch_dir not in sys.path:
            sys.path.insert(0, self.launch_dir)
        return super().__call__(*call)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        import submitit
        from submitit.core.utils import FailedJobError, UncompletedJobError

        from sweeper import submitted  # numpy: not in every process that scans Hydra's plugins

        assert self.config is not None and len(job_overrides) > 0
        self.launch_dir = os.getcwd()
        # The executor as upstream's launch builds it (which builds, submits and waits in one).
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR,
            folder=self.params["submitit_folder"],
            **{f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k == "max_num_timeout"},
        )
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                k if k in shared else f"{self._EXECUTOR}_{k}": v
                for k, v in self.params.items()
                if k not in ("submitit_folder", "max_num_timeout")
            }
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        calls: list[Call] = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            calls.append(
                (list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state())
            )
        if self._EXECUTOR == "slurm":
            submitted.refuse_if_still_queued(sweep_dir, [call[2] for call in calls])
        k = self.jobs_per_task
        groups = [calls[i : i + k] for i in range(0, len(calls), k)]
        try:
            # submitit prints sbatch's complaint before raising it: said once, below
            with contextlib.redirect_stderr(io.StringIO()):
                if k == 1:  # one array task per job, as upstream
                    jobs = executor.map_array(self, *zip(*calls, strict=True))
                else:
                    jobs = executor.map_array(Pack(self), groups)
        except FailedJobError as e:  # a partition, a GPU count, a memory size the cluster refuses
            said = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
            first, last = calls[0][2], calls[-1][2]
            nums = f"job {first}" if first == last else f"jobs {first}-{last}"
            print(
                f"error: sbatch refused the job array of {nums}, which was not submitted: {said or 'no reason given'}",
                file=sys.stderr,
            )
            raise SystemExit(2) from None
        if k > 1:
            log.info(f"{len(calls)} jobs, {k} per array task: {len(groups)} tasks")
        if self._EXECUTOR == "slurm":  # each job's SLURM id, before any has a record of its own
            ids = {
                call[2]: str(job.job_id) for job, group in zip(jobs, groups, strict=True) for call in group
            }
            submitted.record(sweep_dir, ids)

        results = []
        for job, group in zip(jobs, groups, strict=True):
            try:
                returned = job.results()[0]
                returned = returned if k > 1 else [returned]
            except UncompletedJobError as e:
                # FailedJobError (a subclass): the task raised outside Hydra's run_job, a failure
                # of its own, unless it is submitit's own "not requeued" (out of requeues: lost).
                # Any other: no result at all (cancelled, killed, its node gone): lost.
                if isinstance(e, FailedJobError) and "Job not requeued because" not in str(e):
                    returned = [_failed(call[0], e) for call in group]
                else:
                    why = (str(e).strip().splitlines() or [""])[0]
                    returned = [_failed(call[0], Lost(f"{type(e).__name__}: {why}")) for call in group]
            for call, ret in zip(group, returned, strict=True):
                results.append(self._settle(ret, call, job))
        return results

    def _settle(self, ret: JobReturn, call: Call, job) -> JobReturn:
        """The job's return as Hydra's launchers give it (a failed job FAILED with its exception,
        which the sweeper raises), but a lost one as a stand-in that lets the sweep go on to its
        summary: its run record, not this value, says what happened to it."""
        if ret.status == JobStatus.COMPLETED or not isinstance(ret._return_value, Lost):
            return ret
        lines = str(ret._return_value).strip().splitlines()
        log.error(
            f"job #{call[2]} ({' '.join(filter_overrides(call[0]))}) ended without a result: "
            f"{lines[0] if lines else 'lost'}  (log: {job.paths.stderr})"
        )
        return JobReturn(overrides=call[0], status=JobStatus.COMPLETED, _return_value=LOST)


class SweeperSlurmLauncher(_Launcher):
    _EXECUTOR = "slurm"


class SweeperLocalLauncher(_Launcher):
    _EXECUTOR = "local"


class Pack:
    """One array task's share of the grid: its jobs run at once, one process each, on the task's
    GPU(s) (CUDA_VISIBLE_DEVICES) with a share of its CPUs (OMP_NUM_THREADS). A requeued task
    reruns the whole pack; each run then skips, resumes or reruns itself from its record."""

    def __init__(self, launcher: _Launcher) -> None:
        import cloudpickle  # submitit's own pickler: the task function may live in __main__

        # Kept pickled: the task's own process only starts the jobs, without importing their code.
        self.launcher = cloudpickle.dumps(launcher)

    def __call__(self, calls: list[Call]) -> list[JobReturn]:
        import multiprocessing

        import cloudpickle

        ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked CUDA or threads
        try:
            cpus = int(os.environ["SLURM_CPUS_PER_TASK"])
        except (KeyError, ValueError):
            cpus = len(os.sched_getaffinity(0))
        threads = max(1, cpus // len(calls))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        print(
            f"sweeper: jobs {', '.join(str(c[2]) for c in calls)} packed in this task, one process each, "
            f"{threads} CPU threads each, GPUs {os.environ.get('CUDA_VISIBLE_DEVICES', 'none')}",
            flush=True,
        )
        running = []
        try:
            for call in calls:
                receive, send = ctx.Pipe(duplex=False)
                args = (self.launcher, cloudpickle.dumps(call), send)
                process = ctx.Process(target=_run_one, args=args, name=f"job{call[2]}")
                process.start()
                send.close()  # the child holds the only sending end: its exit means EOF here
                running.append((process, receive))
            out = []
            for call, (process, receive) in zip(calls, running, strict=True):
                try:
                    ret = cloudpickle.loads(receive.recv_bytes())
                except EOFError:  # the process died without an answer (killed, out of memory)
                    process.join()
                    ret = _failed(call[0], Lost(f"job process exited with code {process.exitcode}"))
                out.append(ret)
            for process, _ in running:
                process.join()
            return out
        finally:  # on the way out of a preempted task (SystemExit from submitit), leave no orphans
            for process, _ in running:
                if process.is_alive():
                    process.kill()

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's hook on preemption or timeout: requeue the same pack."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _run_one(launcher: bytes, call: bytes, send) -> None:
    # SLURM signals every process of the task. The task's main process (submitit) decides what a
    # signal means (USR2: checkpoint and requeue); a job process trains on until that happens.
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    import cloudpickle

    launcher, call = cloudpickle.loads(launcher), cloudpickle.loads(call)
    try:
        ret = launcher(*call)
    except BaseException as e:  # reported to the task, which reports it to the sweep
        ret = _failed(call[0], e)
    try:
        answer = cloudpickle.dumps(ret)
    except Exception as e:  # an unpicklable return value or exception
        answer = cloudpickle.dumps(_failed(call[0], RuntimeError(f"unpicklable job return: {e!r}")))
    send.send_bytes(answer)
    send.close()


class Lost(RuntimeError):
    """Why a job came back without any result of its own: cancelled, killed, its node gone."""


def _failed(overrides: Sequence[str], error: BaseException) -> JobReturn:
    return JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=error)

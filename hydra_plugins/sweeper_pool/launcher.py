"""Many trials per machine: a pool of long-lived workers, `slots_per_device` per GPU.

    python -m sweeper -m hydra/launcher=pool model.channels=16,32,64 lr=0.2,0.1,0.01
    python -m sweeper -m hydra/launcher=pool hydra.launcher.devices=[0,1] hydra.launcher.slots_per_device=4 ...
    python -m sweeper -m hydra/launcher=pool hydra.launcher.fuse=true lr=0.2,0.1,0.01 trainer.seed=0,1,2

A small convnet leaves a GPU mostly idle, so several trainings share it. Each worker is pinned to
one device and runs job after job, paying process start, imports, the CUDA context and the
decoded data once. A single worker on the CPU or on GPU 0 is the launching process itself. With
`fuse=true`, jobs that differ only in lr, schedule, optimizer settings and seed train as one
program (sweeper/fused.py). Every job writes its own complete run record.

SIGINT or SIGTERM stops the sweep: no further job starts, the running ones keep their last
checkpoint for a rerun to resume, every worker is reaped, the summary is printed, and the exit
status is 130 or 143. A worker that dies fails its job alone (its record says why), a fresh
worker takes the slot, and the sweep goes on.
"""

# No `from __future__ import annotations`: Hydra's plugin scan executes this module before it is
# in sys.modules, and dataclasses then cannot resolve string annotations.
import contextlib
import copy
import json
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import OmegaConf, open_dict, read_write

from hydra_plugins.sweeper_pool._workers import WorkerDied, _Here, _Pool, _Signals

log = logging.getLogger(__name__)


@dataclass
class PoolLauncherConf:
    _target_: str = "hydra_plugins.sweeper_pool.launcher.PoolLauncher"
    # GPU indices to spread workers over; "auto" = every visible GPU, or the CPU when there is none
    devices: Any = field(default_factory=lambda: ["auto"])
    slots_per_device: int = 1  # concurrent trainings per device
    fuse: bool = False  # train jobs that differ only in lr/schedule/optim/seed as one program


ConfigStore.instance().store(group="hydra/launcher", name="pool", node=PoolLauncherConf, provider="sweeper")


def resolve_devices(devices: Sequence) -> list[str]:
    """["auto"] -> every visible GPU index, or ["cpu"] without one; explicit lists are kept."""
    if list(devices) != ["auto"]:
        return [str(d) for d in devices]
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [str(i) for i in range(n)] or ["cpu"]


@contextlib.contextmanager
def _job_threads(sweep_config):
    """Around a job: the CPU threads its `trainer.threads` states, if a count (else the worker's
    share), and the worker's own again after it."""
    wanted = OmegaConf.select(
        sweep_config, "trainer.threads", default="auto", throw_on_resolution_failure=False
    )
    if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1:
        yield
        return
    import torch

    given = torch.get_num_threads()
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(given)


def _run_one(payload: bytes) -> bytes:
    hydra_context, task_function, sweep_config, singleton_state = cloudpickle.loads(payload)
    Singleton.set_state(singleton_state)
    setup_globals()
    try:
        with _job_threads(sweep_config):
            ret = run_job(
                hydra_context=hydra_context,
                task_function=task_function,
                config=sweep_config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
    finally:
        # As Hydra's basic launcher does: the job's log file would get the next jobs' lines.
        configure_log(sweep_config.hydra.hydra_logging, sweep_config.hydra.verbose)
    return cloudpickle.dumps(ret)


class PoolLauncher(Launcher):
    def __init__(self, devices: Sequence = ("auto",), slots_per_device: int = 1, fuse: bool = False) -> None:
        if int(slots_per_device) < 1:
            raise ValueError(f"hydra.launcher.slots_per_device={slots_per_device} is invalid: must be >= 1")
        if isinstance(devices, str | int) and not isinstance(devices, bool):
            devices = [devices]  # devices=cpu, devices=0: a list of one
        named = [str(d) for d in devices] if isinstance(devices, Sequence) else []
        if not named or (named != ["auto"] and not all(d == "cpu" or d.isdigit() for d in named)):
            shown = list(devices) if isinstance(devices, Sequence) else devices
            raise ValueError(
                f"hydra.launcher.devices={shown} is invalid: allowed values are [auto], [cpu] "
                "or GPU indices as torch counts them (0, 1, ...)"
            )
        gpus = [int(d) for d in named if d.isdigit()]
        if gpus:  # else a worker given a GPU it cannot see would train on the CPU, silently
            import torch

            seen = torch.cuda.device_count()  # what CUDA_VISIBLE_DEVICES (SLURM's mask) leaves
            if max(gpus) >= seen:
                allowed = f"[auto], [cpu] or indices 0..{seen - 1}" if seen else "[auto] or [cpu]"
                raise ValueError(
                    f"hydra.launcher.devices={named} is invalid: this process sees {seen or 'no'} "
                    f"GPU{'' if seen == 1 else 's'}; allowed values are {allowed}"
                )
        self.devices = named
        self.slots_per_device = int(slots_per_device)
        self.fuse = bool(fuse)
        self.config = self.task_function = self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        devices = resolve_devices(self.devices)
        n_workers = min(len(job_overrides), len(devices) * self.slots_per_device)
        log.info(
            f"Launching {len(job_overrides)} jobs on {n_workers} workers ({self.slots_per_device} per device {devices})"
        )
        state = Singleton.get_state()
        configs = []
        for num, overrides in enumerate(job_overrides, initial_job_idx):
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = sweep_config.hydra.job.num = num
            configs.append(sweep_config)
        groups = fused_groups(configs) if self.fuse else [[i] for i in range(len(configs))]
        tasks = []
        for group in groups:
            if len(group) == 1:
                payload = (self.hydra_context, self.task_function, configs[group[0]], state)
                tasks.append((_run_one, cloudpickle.dumps(payload)))
            else:
                log.info(f"fusing jobs {group} into one program")
                tasks.append((_run_fused, cloudpickle.dumps(([configs[i] for i in group], state))))

        def failed(task: int, error: Exception, worker) -> None:
            from sweeper import rundir  # torch: not in every process that scans Hydra's plugins

            for c in (configs[i] for i in groups[task]):
                try:  # a worker that died after a checkpoint leaves its run to resume, as Ctrl-C does
                    rundir.record_lost(_task_config(c), _run_dir(c), list(c.hydra.overrides.task), int(c.hydra.job.num),
                                       error, worker.pid, worker.started, resumable=isinstance(error, WorkerDied))  # fmt: skip
                except Exception:  # the sweep goes on; its summary shows the record as it is
                    log.exception(f"job #{c.hydra.job.num}: could not record its failure")

        runner = _Here(failed) if runs_here(devices, n_workers) else _Pool(devices, n_workers, failed)
        try:
            with _Signals() as signals:
                runner.signals = signals
                answers = runner.run(tasks)
        except KeyboardInterrupt as stop:  # SIGINT, or SIGTERM (Stopped); the workers are reaped
            self._stopped(getattr(stop, "signum", signal.SIGINT), runner, groups, configs)
        results: list = [None] * len(configs)
        for group, (kind, value) in zip(groups, answers, strict=True):
            if kind == "ok":
                returned = cloudpickle.loads(value)
                for i, ret in zip(group, returned if len(group) > 1 else [returned], strict=True):
                    results[i] = ret
            else:  # no return from the worker: the job's record says what happened
                for i in group:
                    results[i] = _returned(configs[i], kind)
        return results

    def _stopped(self, signum: int, runner, groups, configs) -> None:
        """Say which jobs the stop signal stopped, print the sweep's summary, exit as the signal asks."""

        def jobs(tasks) -> str:
            nums = [str(configs[i].hydra.job.num) for t in sorted(tasks) for i in groups[t]]
            return f"job{'s' if len(nums) > 1 else ''} {', '.join(nums)}" if nums else "none"

        log.warning(
            f"{signal.Signals(signum).name}: sweep stopped. Interrupted: {jobs(runner.running.values())} "
            f"(a rerun into {self.config.hydra.sweep.dir} resumes them from their last checkpoint, if any); "
            f"not started: {jobs(runner.pending)}"
        )
        with contextlib.suppress(SystemExit):  # the summary's own exit 1: the signal's status wins
            self.hydra_context.callbacks.on_multirun_end(
                config=self.config, config_name=self.config.hydra.job.get("config_name")
            )
        if signum == signal.SIGTERM:
            raise SystemExit(128 + signal.SIGTERM) from None
        # An uncaught KeyboardInterrupt exits by SIGINT (130), which stops a calling shell script too.
        raise KeyboardInterrupt from None


def runs_here(devices: list[str], n_workers: int) -> bool:
    """Whether the one worker can be this process: on GPU 0 (what its cuda already means), or on
    the CPU where it sees no GPU. That saves a spawn and a second import of torch."""
    if n_workers != 1:
        return False
    if devices[0] == "cpu":
        import torch

        return not torch.cuda.is_available()
    return devices[0] == "0"


def _run_dir(sweep_config) -> Path:
    return Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)


def _returned(sweep_config, value: str) -> JobReturn:
    """A job's return where Hydra's run_job gave none, marked completed so that Hydra's sweeper
    does not abort the sweep: the run records say how each job ended."""
    return JobReturn(
        overrides=list(sweep_config.hydra.overrides.task),
        cfg=_task_config(sweep_config),
        hydra_cfg=sweep_config,
        working_dir=str(_run_dir(sweep_config)),
        task_name=str(sweep_config.hydra.job.name),
        status=JobStatus.COMPLETED,
        _return_value=value,
    )


def _task_config(sweep_config):
    """The job's config without its hydra node, as Hydra's run_job makes it."""
    task = copy.deepcopy(sweep_config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def fused_groups(configs) -> list[list[int]]:
    """Indices of jobs that can train as one program (sweeper.fused.fusable); the others alone,
    each with the reason logged (`fuse=true` is a request: a job that cannot fuse still runs)."""
    from sweeper import fused

    by_key: dict[str | int, list[int]] = {}
    for i, sweep_config in enumerate(configs):
        task = _task_config(sweep_config)
        why = fused.fusable([task])
        if why is not None:
            log.info(f"job #{sweep_config.hydra.job.num} runs alone: {why}")
        by_key.setdefault(
            i if why is not None else json.dumps(fused._shared(task), sort_keys=True), []
        ).append(i)
    for key, group in by_key.items():
        if len(group) == 1 and isinstance(key, str):
            log.info(
                f"job #{configs[group[0]].hydra.job.num} runs alone: no other job shares its model, data and trainer"
            )
    return list(by_key.values())


def _run_fused(payload: bytes) -> bytes:
    """A fused group in one worker: lay out each job's dir as Hydra would, then train them together."""
    sweep_configs, singleton_state = cloudpickle.loads(payload)
    Singleton.set_state(singleton_state)
    setup_globals()
    line = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
    logging.basicConfig(level=logging.INFO, format=line)
    from sweeper.fused import TrialLog, run_group

    tasks = [_task_config(c) for c in sweep_configs]
    dirs = [_run_dir(c) for c in sweep_configs]
    # Hydra's files go where run_job would write them: a pending dir (sweeper/__main__) that the
    # run moves to .hydra/ when it starts an attempt; hydra.output_subdir=null writes none.
    subdir = sweep_configs[0].hydra.output_subdir
    hydra_files = None if subdir is None else str(subdir)
    logs = []
    for sweep_config, task, out in zip(sweep_configs, tasks, dirs, strict=True):
        out.mkdir(parents=True, exist_ok=True)
        with read_write(sweep_config.hydra.runtime):
            sweep_config.hydra.runtime.output_dir = str(out.absolute())
        if hydra_files is not None:
            (out / hydra_files).mkdir(parents=True, exist_ok=True)
            OmegaConf.save(task, out / hydra_files / "config.yaml")
            OmegaConf.save(OmegaConf.create({"hydra": sweep_config.hydra}), out / hydra_files / "hydra.yaml")
            OmegaConf.save(sweep_config.hydra.overrides.task, out / hydra_files / "overrides.yaml")
        # Each trial's <job name>.log, as a solo run has: the group's lines and its own (TrialLog).
        handler = logging.FileHandler(out / f"{sweep_config.hydra.job.name}.log")
        handler.setFormatter(logging.Formatter(line))
        handler.addFilter(TrialLog(out))
        logs.append(handler)
    overrides = [list(c.hydra.overrides.task) for c in sweep_configs]
    nums = [int(c.hydra.job.num) for c in sweep_configs]
    root = logging.getLogger()
    for handler in logs:
        root.addHandler(handler)
    try:
        with _job_threads(sweep_configs[0]):  # the group's: trainer is shared
            summaries = run_group(tasks, dirs, overrides, nums, hydra_files)
    finally:
        for handler in logs:
            root.removeHandler(handler)
            handler.close()
        configure_log(sweep_configs[0].hydra.hydra_logging, sweep_configs[0].hydra.verbose)
    return cloudpickle.dumps(
        [_returned(c, s["status"]) for c, s in zip(sweep_configs, summaries, strict=True)]
    )

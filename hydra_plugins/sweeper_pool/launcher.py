"""Many trials per machine: a pool of long-lived workers, `slots_per_device` per GPU.

    python -m sweeper -m hydra/launcher=pool model.channels=16,32,64 lr=0.2,0.1,0.01
    python -m sweeper -m hydra/launcher=pool hydra.launcher.devices=[0,1] hydra.launcher.slots_per_device=4 ...
    python -m sweeper -m hydra/launcher=pool hydra.launcher.fuse=true lr=0.2,0.1,0.01 trainer.seed=0,1,2

A small convnet leaves a big GPU mostly idle and is launch-bound, so several trainings sharing
a GPU as separate processes finish far sooner than one after the other. Each worker is pinned to
one device (CUDA_VISIBLE_DEVICES) and stays up for the whole sweep, running job after job, so
process start, imports, the CUDA context and the decoded data set (memoised in sweeper.data) are
paid once per worker, not once per job. Every job still writes its own complete run record.
`devices: [cpu]` (the default where there is no GPU) runs `slots_per_device` workers on the CPU.
A single worker on the CPU or on GPU 0 is the launching process itself.
With `fuse=true`, jobs that differ only in lr, schedule, optimizer settings and seed are trained
as one program in one worker, one wide net for all of them (sweeper/fused.py); each still writes its own record.
"""

# No `from __future__ import annotations`: Hydra's plugin scan executes this module before it is
# in sys.modules, and dataclasses then cannot resolve string annotations.
import copy
import json
import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


@dataclass
class PoolLauncherConf:
    _target_: str = "hydra_plugins.sweeper_pool.launcher.PoolLauncher"
    # GPU indices to spread workers over; "auto" = every visible GPU, or the CPU when there is none
    devices: Any = field(default_factory=lambda: ["auto"])
    slots_per_device: int = 1  # concurrent trainings per device
    # train jobs that differ only in lr/schedule/optim/seed as one program (sweeper/fused.py)
    fuse: bool = False


ConfigStore.instance().store(group="hydra/launcher", name="pool", node=PoolLauncherConf, provider="sweeper")


def resolve_devices(devices: Sequence) -> list[str]:
    """["auto"] -> every visible GPU index, or ["cpu"] without one; explicit lists are kept."""
    if list(devices) != ["auto"]:
        return [str(d) for d in devices]
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [str(i) for i in range(n)] or ["cpu"]


def _pin_worker(slots, visible: str | None) -> None:
    """Runs once in each new worker: take a device slot and keep it for the worker's life.

    A device index counts the GPUs the launching process sees, as torch's cuda:N does: under
    CUDA_VISIBLE_DEVICES=2,3 (a SLURM allocation, say), device 0 is physical GPU 2."""
    device = slots.get()
    # Before torch initialises CUDA in this process. A CPU slot sees no GPU, so that its jobs'
    # trainer.device=auto means the CPU there.
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible.split(",")[int(device)] if visible else device


def _run_one(payload: bytes) -> bytes:
    hydra_context, task_function, sweep_config, singleton_state = cloudpickle.loads(payload)
    Singleton.set_state(singleton_state)
    setup_globals()
    ret = run_job(
        hydra_context=hydra_context,
        task_function=task_function,
        config=sweep_config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
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
        for i, overrides in enumerate(job_overrides):
            num = initial_job_idx + i
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = num
                sweep_config.hydra.job.num = num
            configs.append(sweep_config)
        groups = fused_groups(configs) if self.fuse else [[i] for i in range(len(configs))]
        results: list = [None] * len(configs)
        # A single worker on the CPU or on GPU 0 is this process: that saves a spawn and a second
        # import of torch (about 1 s on cpu-vm, 4 s on the H100 machine).
        here = runs_here(devices, n_workers)
        with _ThisProcess() if here else _worker_processes(devices, n_workers) as pool:
            futures = []
            for group in groups:
                if len(group) == 1:
                    payload = cloudpickle.dumps(
                        (self.hydra_context, self.task_function, configs[group[0]], state)
                    )
                    futures.append((group, pool.submit(_run_one, payload)))
                else:
                    log.info(f"fusing jobs {group} into one program")
                    payload = cloudpickle.dumps(([configs[i] for i in group], state))
                    futures.append((group, pool.submit(_run_fused, payload)))
            for group, future in futures:
                returned = cloudpickle.loads(future.result())
                for i, ret in zip(group, returned if len(group) > 1 else [returned], strict=True):
                    results[i] = ret
        return results


def runs_here(devices: list[str], n_workers: int) -> bool:
    """Whether the one worker can be the launching process: on GPU 0, which is what this
    process's cuda and cuda:0 already mean, or on the CPU where this process sees no GPU (another
    GPU, or the CPU beside one, needs a pinned process)."""
    if n_workers != 1:
        return False
    if devices[0] == "cpu":
        import torch

        return not torch.cuda.is_available()
    return devices[0] == "0"


def _worker_processes(devices: list[str], n_workers: int) -> ProcessPoolExecutor:
    """n_workers spawned processes, each pinned to a device slot for its life (_pin_worker)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # PoolLauncher has checked the indices
    context = multiprocessing.get_context("spawn")  # fork would copy a live CUDA context
    slots = context.Queue()
    for i in range(n_workers):
        slots.put(devices[i % len(devices)])
    return ProcessPoolExecutor(
        n_workers, mp_context=context, initializer=_pin_worker, initargs=(slots, visible)
    )


class _ThisProcess:
    """An executor that runs each call at once, in this process."""

    def submit(self, fn, *args) -> Future:
        done = Future()
        done.set_result(fn(*args))
        return done

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def _task_config(sweep_config):
    task = copy.deepcopy(sweep_config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def fused_groups(configs) -> list[list[int]]:
    """Indices of jobs that can train as one program (sweeper.fused.fusable); others alone."""
    from sweeper import fused

    by_key: dict[str, list[int]] = {}
    for i, sweep_config in enumerate(configs):
        task = _task_config(sweep_config)
        key = (
            json.dumps(fused._shared(task), sort_keys=True) if fused.fusable([task]) is None else f"solo-{i}"
        )
        by_key.setdefault(key, []).append(i)
    return list(by_key.values())


def _run_fused(payload: bytes) -> bytes:
    """A fused group in one worker: lay out each job's dir as Hydra would, then train them together."""
    sweep_configs, singleton_state = cloudpickle.loads(payload)
    Singleton.set_state(singleton_state)
    setup_globals()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    from sweeper.fused import run_group

    tasks, dirs, overrides, nums = [], [], [], []
    for sweep_config in sweep_configs:
        out = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
        (out / ".hydra").mkdir(parents=True, exist_ok=True)
        task = _task_config(sweep_config)
        OmegaConf.save(task, out / ".hydra" / "config.yaml")
        OmegaConf.save(OmegaConf.create({"hydra": sweep_config.hydra}), out / ".hydra" / "hydra.yaml")
        OmegaConf.save(sweep_config.hydra.overrides.task, out / ".hydra" / "overrides.yaml")
        tasks.append(task)
        dirs.append(out)
        overrides.append(list(sweep_config.hydra.overrides.task))
        nums.append(int(sweep_config.hydra.job.num))
    summaries = run_group(tasks, dirs, overrides, nums)
    returns = [
        JobReturn(
            overrides=o,
            cfg=t,
            hydra_cfg=sc,
            working_dir=str(d),
            task_name=str(sc.hydra.job.name),
            status=JobStatus.COMPLETED,
            _return_value=summary["status"],
        )  # fmt: skip
        for o, t, sc, d, summary in zip(overrides, tasks, sweep_configs, dirs, summaries, strict=True)
    ]
    return cloudpickle.dumps(returns)

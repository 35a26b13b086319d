"""Many trials per machine: a pool of long-lived workers, `slots_per_device` per GPU.

    python -m sweeper -m hydra/launcher=pool model.channels=16,32,64 lr=0.2,0.1,0.01
    python -m sweeper -m hydra/launcher=pool hydra.launcher.devices=[0,1] hydra.launcher.slots_per_device=4 ...
    python -m sweeper -m hydra/launcher=pool hydra.launcher.fuse=true lr=0.2,0.1,0.01 trainer.seed=0,1,2

A small convnet leaves a big GPU mostly idle and is launch-bound, so several trainings sharing
a GPU as separate processes finish far sooner than one after the other. Each worker is pinned to
one device and runs job after job, so process start, imports, the CUDA context and the decoded
data set are paid once per worker, not once per job. A single worker on the CPU or on GPU 0 is
the launching process itself. With `fuse=true`, jobs that differ only in lr, schedule, optimizer
settings and seed train as one program, one wide net for all (sweeper/fused.py). Every job still
writes its own complete run record.

Ctrl-C (SIGINT) or SIGTERM stops the sweep: no further job starts, the running ones are stopped
(their records keep their last checkpoint, so a rerun resumes them), every worker is reaped, the
sweep's summary is printed, and the exit status is 130 or 143. A worker that dies (the OOM
killer's SIGKILL, a crash) fails its job alone: the job's record is closed as failed with the
reason, a fresh worker takes the slot, and the sweep goes on.
"""

# No `from __future__ import annotations`: Hydra's plugin scan executes this module before it is
# in sys.modules, and dataclasses then cannot resolve string annotations.
import contextlib
import copy
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing import connection
from pathlib import Path
from typing import Any

import cloudpickle
from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import OmegaConf, open_dict, read_write

from sweeper.processes import process_started

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


def threads_per_worker(n_workers: int) -> int:
    """CPU threads for each of `n_workers` workers: this process's CPUs shared out (each would
    otherwise start one per core, oversubscribing them N times), unless the user set a positive
    OMP_NUM_THREADS. A job's own `trainer.threads` count wins over it (_job_threads)."""
    given = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()  # OpenMP allows "4,2": per level
    if given.isdigit() and int(given) > 0:
        return int(given)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // max(1, n_workers))


def _pin_worker(device: str, visible: str | None, threads: int) -> None:
    """Pin a new worker to its device slot and its share of the CPUs, before torch starts CUDA.
    A device index counts the GPUs the launching process sees, as torch's cuda:N does (under
    CUDA_VISIBLE_DEVICES=2,3 device 0 is GPU 2); a CPU slot sees none, so device=auto is the CPU."""
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible.split(",")[int(device)] if visible else device
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


@contextlib.contextmanager
def _job_threads(sweep_config):
    """Around a job: the CPU threads its `trainer.threads` states, if a count (else the worker's
    share), and the worker's own again after it. A config without the key keeps them."""
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


def _reset_logging(sweep_config) -> None:
    """After a job, as Hydra's basic launcher does: the launcher's logging again, without the
    job's log file, which would otherwise get the next jobs' lines and the launcher's."""
    configure_log(sweep_config.hydra.hydra_logging, sweep_config.hydra.verbose)


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
        _reset_logging(sweep_config)
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
        tasks = []
        for group in groups:
            if len(group) == 1:
                payload = cloudpickle.dumps(
                    (self.hydra_context, self.task_function, configs[group[0]], state)
                )
                tasks.append((_run_one, payload))
            else:
                log.info(f"fusing jobs {group} into one program")
                tasks.append((_run_fused, cloudpickle.dumps(([configs[i] for i in group], state))))

        def failed(task: int, error: Exception, worker: "_Worker") -> None:
            from sweeper import rundir  # torch: not in every process that scans Hydra's plugins

            for i in groups[task]:
                c = configs[i]
                try:  # a worker that died after a checkpoint leaves its run to resume, as Ctrl-C does
                    rundir.record_lost(_task_config(c), _run_dir(c), list(c.hydra.overrides.task), int(c.hydra.job.num),
                                       error, worker.pid, worker.started, resumable=isinstance(error, WorkerDied))  # fmt: skip
                except Exception:  # the sweep goes on; its summary shows the record as it is
                    log.exception(f"job #{configs[i].hydra.job.num}: could not record its failure")

        # A single worker on the CPU or on GPU 0 is this process: that saves a spawn and a second
        # import of torch (about 1 s on cpu-vm, 4 s on the H100 machine).
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
        """After a stop signal: say which jobs it stopped, print the sweep's summary as at any
        end (sweeper.sweep.SweepCallback, from the run records), and exit as the signal asks."""

        def jobs(tasks) -> str:
            nums = [str(configs[i].hydra.job.num) for t in sorted(tasks) for i in groups[t]]
            return f"job{'s' if len(nums) > 1 else ''} {', '.join(nums)}" if nums else "none"

        name = signal.Signals(signum).name
        log.warning(
            f"{name}: sweep stopped. Interrupted: {jobs(runner.running.values())} (a rerun into "
            f"{self.config.hydra.sweep.dir} resumes them from their last checkpoint, if any); "
            f"not started: {jobs(runner.pending)}"
        )
        with contextlib.suppress(SystemExit):  # the summary's own exit 1: the signal's status wins
            self.hydra_context.callbacks.on_multirun_end(
                config=self.config, config_name=self.config.hydra.job.get("config_name")
            )
        if signum == signal.SIGTERM:
            raise SystemExit(128 + signal.SIGTERM) from None
        # Python exits on an uncaught KeyboardInterrupt by SIGINT (status 130 in a shell), which
        # tells a calling shell script to stop too.
        raise KeyboardInterrupt from None


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


STOPPED = 128 + signal.SIGTERM  # a worker's exit status once SIGTERM has stopped it
GRACE_S = 10.0  # how long stopped workers get to unwind their jobs before they are killed


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM while a sweep launches. A KeyboardInterrupt, so that a job running in
    this process unwinds as from Ctrl-C: not recorded as failed, its checkpoint kept."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Signals:
    """While the jobs run, SIGINT and SIGTERM raise Stopped in this process (SIGTERM would
    otherwise kill it on the spot and orphan the workers); `urgent`, when set, is called instead
    (a second signal while the workers are being stopped: kill them now). A signal ignored on
    entry (SIGINT in a shell's background job) stays ignored. Only the main thread can do this."""

    def __init__(self) -> None:
        self.previous: dict = {}
        self.urgent: Callable[[], None] | None = None

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(signum) != signal.SIG_IGN:
                    self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.urgent is not None:
            self.urgent()
            return
        raise Stopped(signum)


class PoolError(RuntimeError):
    """A job that ended without an answer from its worker: the worker died, or the job raised
    outside its run. Recorded in the run's summary.json as the failure's reason."""


class WorkerDied(PoolError):
    """The worker died (killed, out of memory) or exited while it ran the job."""


class _Here:
    """The one worker is this process: each job runs here, one after the other. A stop signal
    raises inside the running job (Stopped), which train.run leaves unrecorded, as Ctrl-C. A job
    that raises outside its run is failed as in a spawned worker (_Pool._answered), and the
    sweep goes on."""

    def __init__(self, failed: Callable[[int, Exception, "_Worker"], None]) -> None:
        self.running: dict[int, int] = {}  # slot -> task, as _Pool's
        self.pending: deque[int] = deque()
        self.signals: _Signals | None = None
        self.failed = failed

    def run(self, tasks: list) -> list:
        self.pending = deque(range(len(tasks)))
        answers = []
        here = _Worker(None, None, os.getpid(), process_started(os.getpid()))
        while self.pending:
            task = self.running[0] = self.pending.popleft()
            fn, payload = tasks[task]
            try:
                answers.append(("ok", fn(payload)))
            except Exception as err:
                why = f"the job raised outside its run, in process {here.pid}: {type(err).__name__}: {err}"
                log.error(f"{why}\n{traceback.format_exc()}")
                answers.append(("failed", why))
                self.failed(task, PoolError(why), here)
            del self.running[0]
        return answers


@dataclass
class _Worker:
    process: Any  # multiprocessing's SpawnProcess
    conn: Any  # this end of its pipe: jobs go out, answers come back
    pid: int
    started: int | None  # sweeper.processes.process_started: with the pid, names the process


class _Pool:
    """Spawned workers (_serve), one per device slot, each pinned to its slot's device and running
    job after job. A worker that dies is replaced by a fresh one on its slot when the next job
    needs it; the job it was running is reported to `failed` (unless a SIGTERM stopped it, which
    leaves the run to resume), and the other workers go on."""

    def __init__(self, devices: list[str], n_workers: int, failed: Callable[[int, Exception, _Worker], None]):
        self.context = multiprocessing.get_context("spawn")  # fork would copy a live CUDA context
        self.visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # PoolLauncher has checked the indices
        self.threads = threads_per_worker(n_workers)
        self.slots = [devices[i % len(devices)] for i in range(n_workers)]
        self.workers: list[_Worker | None] = [None] * n_workers
        self.failed = failed
        self.running: dict[int, int] = {}  # slot -> the task its worker runs
        self.pending: deque[int] = deque()
        self.signals: _Signals | None = None

    def run(self, tasks: list) -> list:
        """The answers, in task order: ("ok", the job's pickled return), ("failed", why) or
        ("stopped", why). On any exception (a stop signal) every worker is stopped and reaped first."""
        answers: list = [None] * len(tasks)
        self.pending = deque(range(len(tasks)))
        try:
            while self.pending or self.running:
                self._dispatch(tasks)
                self._collect(answers)
            self._close(stop=False)
        except BaseException:  # a stop signal, even one during the closing above
            self._close(stop=True)
            raise
        return answers

    def _dispatch(self, tasks: list) -> None:
        idle = [slot for slot in range(len(self.slots)) if slot not in self.running][: len(self.pending)]
        # Every worker needed is started before any job is sent: a send waits until its worker,
        # still starting (seconds), takes the job, and the others should start meanwhile.
        for slot in idle:
            worker = self.workers[slot]
            if worker is not None and not worker.process.is_alive():  # died idle: no job lost
                self._reap(slot, None)
            if self.workers[slot] is None:
                self._start(slot)
        for slot in idle:
            task = self.running[slot] = self.pending.popleft()
            # A worker that died meanwhile (even while starting) fails the job, found by _collect:
            # handing the job to the next worker instead could respawn a failing worker forever.
            with contextlib.suppress(OSError):
                self.workers[slot].conn.send(tasks[task])

    def _start(self, slot: int) -> _Worker:
        ours, theirs = self.context.Pipe()
        process = self.context.Process(
            target=_serve,
            args=(theirs, self.slots[slot], self.visible, self.threads, os.getpid()),
            name=f"pool-worker-{slot}",
            # Should this process end by a way _close does not see, multiprocessing's exit
            # handler then terminates (SIGTERM: stops) its daemonic children before it waits for them.
            daemon=True,
        )
        with _starting():
            process.start()
            self.workers[slot] = worker = _Worker(process, ours, process.pid, process_started(process.pid))
            theirs.close()  # the worker holds the only other end: its exit reads as EOF here
        return worker

    def _collect(self, answers: list) -> None:
        """Wait until a running job answers or a worker exits, and settle that."""
        live = {slot: w for slot, w in enumerate(self.workers) if w is not None}
        waiting = [w.process.sentinel for w in live.values()] + [live[s].conn for s in self.running]
        ready = set(connection.wait(waiting))
        for slot, worker in live.items():
            if worker.conn not in ready and worker.process.sentinel not in ready:
                continue
            if slot in self.running:
                try:
                    answer = worker.conn.recv()
                except (EOFError, OSError):  # the worker is gone without an answer
                    pass
                else:
                    self._answered(self.running.pop(slot), answer, worker, answers)
            if worker.process.sentinel in ready or slot in self.running:
                self._reap(slot, answers)

    def _answered(self, task: int, answer: tuple, worker: _Worker, answers: list) -> None:
        if answer[0] == "ok":
            answers[task] = answer
            return
        # It raised outside its run (train.run records the failures inside): as failed as a death.
        why = f"the job raised outside its run, in worker process {worker.pid}: {answer[1].strip().splitlines()[-1]}"
        log.error(f"{why}\n{answer[1]}")
        answers[task] = ("failed", why)
        self.failed(task, PoolError(why), worker)

    def _reap(self, slot: int, answers: list | None) -> None:
        worker, self.workers[slot] = self.workers[slot], None
        worker.process.join(GRACE_S)  # it has closed its pipe: it is exiting
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()
        task = self.running.pop(slot, None)
        if task is None:
            return
        code = worker.process.exitcode
        if code == STOPPED:  # someone else's SIGTERM: an interruption, as Ctrl-C is
            why = f"worker process {worker.pid} was stopped (SIGTERM); its run resumes on a rerun"
            log.warning(f"task {task}: {why}")
            answers[task] = ("stopped", why)
            return
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else "?"
            hint = ": out of memory?" if -code == signal.SIGKILL else ""
            why = f"worker process {worker.pid} died (signal {-code}, {name}{hint})"
        else:
            why = f"worker process {worker.pid} exited with status {code}"
        log.error(f"{why}; a fresh worker takes its slot")
        answers[task] = ("failed", why)
        self.failed(task, WorkerDied(why), worker)

    def _close(self, stop: bool) -> None:
        """Reap every worker. Idle ones leave when their pipe closes; `stop` also sends SIGTERM, which
        stops a running job as an interrupt (_serve). A second stop signal meanwhile kills them at once."""
        live = [w for w in self.workers if w is not None]
        if self.signals is not None:
            self.signals.urgent = lambda: [w.process.kill() for w in live if w.process.exitcode is None]
        try:
            for worker in live:
                if stop and worker.process.exitcode is None:
                    worker.process.terminate()
                worker.conn.close()
            deadline = time.monotonic() + GRACE_S
            for worker in live:
                worker.process.join(max(0.0, deadline - time.monotonic()))
            for worker in live:
                if worker.process.is_alive():
                    log.warning(f"worker process {worker.pid} did not stop in {GRACE_S:.0f} s: killed")
                    worker.process.kill()
                    worker.process.join()
        finally:
            if self.signals is not None:
                self.signals.urgent = None
        self.workers = [None] * len(self.slots)


@contextlib.contextmanager
def _starting():
    """Around a worker's start: it inherits SIGINT ignored (Ctrl-C at a terminal reaches the
    whole process group, but the launcher decides what it means: _serve), and SIGINT/SIGTERM
    here wait, blocked, until the worker is on the books, so that none is started unknown. (The
    worker may inherit the mask too, as spawn starts it from a multi-threaded process: _serve
    lifts it.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)  # blocked, a SIGINT stays pending
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _serve(conn, device: str, visible: str | None, threads: int, launcher: int) -> None:
    """A worker's life: pin to `device`, then run the jobs the launcher sends until it closes the pipe.

    SIGINT is ignored: the launcher decides what Ctrl-C means, and tells the workers with SIGTERM.
    SIGTERM, the launcher's or anyone's, raises KeyboardInterrupt in the running job, which
    unwinds as from Ctrl-C: train.run writes no summary, so the run keeps its last checkpoint and
    a rerun resumes it. The worker then exits with status STOPPED."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt_once)
    # From here on a SIGTERM is an interrupt, even one that comes while the worker still starts
    # (importing torch takes seconds): it exits quietly, as a worker stopped in a job does.
    try:
        # The launcher's mask while it started this worker (_starting) may have come along: a
        # SIGTERM sent meanwhile is delivered now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        _die_with(launcher)
        _pin_worker(device, visible, threads)
        while True:
            try:
                fn, payload = conn.recv()
            except EOFError:  # the launcher closed the pipe: no more jobs
                return
            try:
                answer = ("ok", fn(payload))
            except Exception:  # outside the run (train.run records its own failures)
                answer = ("raised", traceback.format_exc())
            conn.send(answer)
    except KeyboardInterrupt:
        sys.exit(STOPPED)  # without a traceback: the launcher says which jobs were stopped


def _interrupt_once(signum: int, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not break the unwinding
    raise KeyboardInterrupt


def _die_with(launcher: int) -> None:
    """Have the kernel SIGTERM this worker when the launcher dies, even by SIGKILL, rather than
    leave it training as an orphan (Linux's PR_SET_PDEATHSIG; elsewhere an idle worker still
    leaves when the launcher's end of its pipe closes)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != launcher:  # the launcher died before that was set
        sys.exit(STOPPED)


def _run_dir(sweep_config) -> Path:
    return Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)


def _returned(sweep_config, value: str) -> JobReturn:
    """A job's return where Hydra's run_job gave none (a fused job, a job without an answer).
    Marked completed so that Hydra's sweeper does not abort the sweep on it: the run records, read
    by the sweep's summary, say how each job ended."""
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
    task = copy.deepcopy(sweep_config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def fused_groups(configs) -> list[list[int]]:
    """Indices of jobs that can train as one program (sweeper.fused.fusable); others alone, each
    with the reason logged (`fuse=true` is a request: a job that cannot fuse still runs)."""
    from sweeper import fused

    by_key: dict[str, list[int]] = {}
    for i, sweep_config in enumerate(configs):
        task = _task_config(sweep_config)
        why = fused.fusable([task])
        if why is not None:
            log.info(f"job #{sweep_config.hydra.job.num} runs alone: {why}")
        key = json.dumps(fused._shared(task), sort_keys=True) if why is None else f"solo-{i}"
        by_key.setdefault(key, []).append(i)
    groups = list(by_key.values())
    for group in groups:
        if len(group) == 1 and f"solo-{group[0]}" not in by_key:
            log.info(
                f"job #{configs[group[0]].hydra.job.num} runs alone: no other job shares its model, data and trainer"
            )
    return groups


def _run_fused(payload: bytes) -> bytes:
    """A fused group in one worker: lay out each job's dir as Hydra would, then train them together."""
    sweep_configs, singleton_state = cloudpickle.loads(payload)
    Singleton.set_state(singleton_state)
    setup_globals()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    from sweeper.fused import TrialLog, run_group

    tasks, dirs, overrides, nums = [], [], [], []
    # Where Hydra's run_job would write them: a pending dir (sweeper/__main__), which the run
    # moves to .hydra/ only when it starts an attempt, so a resumed or refused job keeps its own.
    # hydra.output_subdir=null: no Hydra files at all, as Hydra's run_job would write none.
    subdir = sweep_configs[0].hydra.output_subdir
    hydra_files = None if subdir is None else str(subdir)
    logs = []
    for sweep_config in sweep_configs:
        out = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
        out.mkdir(parents=True, exist_ok=True)
        task = _task_config(sweep_config)
        with read_write(sweep_config.hydra.runtime):  # as Hydra's run_job sets it for a solo job
            sweep_config.hydra.runtime.output_dir = str(out.absolute())
        if hydra_files is not None:
            (out / hydra_files).mkdir(parents=True, exist_ok=True)
            OmegaConf.save(task, out / hydra_files / "config.yaml")
            OmegaConf.save(OmegaConf.create({"hydra": sweep_config.hydra}), out / hydra_files / "hydra.yaml")
            OmegaConf.save(sweep_config.hydra.overrides.task, out / hydra_files / "overrides.yaml")
        # Each trial's <job name>.log, as Hydra's job logging gives a solo run: the group's lines
        # and the trial's own (fused.TrialLog; a set-aside attempt's log is reopened by
        # rundir.open_record).
        handler = logging.FileHandler(out / f"{sweep_config.hydra.job.name}.log")
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        handler.addFilter(TrialLog(out))
        logs.append(handler)
        tasks.append(task)
        dirs.append(out)
        overrides.append(list(sweep_config.hydra.overrides.task))
        nums.append(int(sweep_config.hydra.job.num))
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
        _reset_logging(sweep_configs[0])
    return cloudpickle.dumps([_returned(c, s["status"]) for c, s in zip(sweep_configs, summaries, strict=True)])

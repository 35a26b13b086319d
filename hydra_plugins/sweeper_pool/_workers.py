"""The pool launcher's workers, each pinned to one device slot, and the stop signals that end
them. (A leading underscore: Hydra's plugin scan skips the module, so its classes are defined once.)"""

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import connection
from typing import Any

from sweeper.processes import process_started

log = logging.getLogger("hydra_plugins.sweeper_pool.launcher")


def threads_per_worker(n_workers: int) -> int:
    """CPU threads for each of `n_workers` workers: this process's CPUs shared out (each would
    otherwise start one per core), unless the user set a positive OMP_NUM_THREADS."""
    given = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()  # OpenMP allows "4,2": per level
    if given.isdigit() and int(given) > 0:
        return int(given)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // max(1, n_workers))


def _pin_worker(device: str, visible: str | None, threads: int) -> None:
    """Pin a new worker to its device and its share of the CPUs, before torch starts CUDA. A device
    index counts the GPUs the launcher sees, as torch's cuda:N does (under CUDA_VISIBLE_DEVICES=2,3
    device 0 is GPU 2)."""
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible.split(",")[int(device)] if visible else device
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


STOPPED = 128 + signal.SIGTERM  # a worker's exit status once SIGTERM has stopped it
GRACE_S = 10.0  # how long stopped workers get to unwind their jobs before they are killed


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM while a sweep launches: a KeyboardInterrupt, so that a job running in this
    process unwinds as from Ctrl-C, its checkpoint kept."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Signals:
    """While the jobs run, SIGINT and SIGTERM raise Stopped here (SIGTERM would otherwise kill this
    process and orphan the workers); `urgent`, when set, is called instead (a second signal while
    the workers stop: kill them). A signal ignored on entry (a shell's background job) stays so."""

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
    """A job that ended without an answer: its worker died, or it raised outside its run."""


class WorkerDied(PoolError):
    """The worker died (killed, out of memory) or exited while it ran the job."""


@dataclass
class _Worker:
    process: Any  # multiprocessing's SpawnProcess; None: this process
    conn: Any  # this end of its pipe: jobs go out, answers come back
    pid: int
    started: int | None  # sweeper.processes.process_started: with the pid, names the process


class _Runner:
    def __init__(self, failed: Callable[[int, Exception, _Worker], None]) -> None:
        self.failed = failed
        self.running: dict[int, int] = {}  # slot -> the task its worker runs
        self.pending: deque[int] = deque()
        self.signals: _Signals | None = None

    def _answered(self, task: int, answer: tuple, worker: _Worker, answers: list) -> None:
        if answer[0] == "ok":
            answers[task] = answer
            return
        where = "process" if worker.process is None else "worker process"
        why = f"the job raised outside its run, in {where} {worker.pid}: {answer[1].strip().splitlines()[-1]}"
        log.error(f"{why}\n{answer[1]}")
        answers[task] = ("failed", why)
        self.failed(task, PoolError(why), worker)


class _Here(_Runner):
    """The one worker is this process: each job runs here in turn; a stop signal raises inside the
    running job (Stopped)."""

    def run(self, tasks: list) -> list:
        answers: list = [None] * len(tasks)
        self.pending = deque(range(len(tasks)))
        here = _Worker(None, None, os.getpid(), process_started(os.getpid()))
        while self.pending:
            task = self.running[0] = self.pending.popleft()
            self._answered(task, _answer(*tasks[task]), here, answers)
            del self.running[0]
        return answers


class _Pool(_Runner):
    """Spawned workers (_serve), one per device slot. A worker that dies is replaced when the next
    job needs its slot; its job goes to `failed` (unless a SIGTERM stopped it: the run resumes)."""

    def __init__(self, devices: list[str], n_workers: int, failed: Callable[[int, Exception, _Worker], None]):
        super().__init__(failed)
        self.context = multiprocessing.get_context("spawn")  # fork would copy a live CUDA context
        self.visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # PoolLauncher has checked the indices
        self.threads = threads_per_worker(n_workers)
        self.slots = [devices[i % len(devices)] for i in range(n_workers)]
        self.workers: list[_Worker | None] = [None] * n_workers

    def run(self, tasks: list) -> list:
        """The answers in task order: ("ok", the pickled return), ("failed", why) or ("stopped", why).
        On any exception (a stop signal) every worker is stopped and reaped first."""
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
        # Every worker needed starts before any job is sent: a send waits for its worker to start.
        for slot in idle:
            worker = self.workers[slot]
            if worker is not None and not worker.process.is_alive():  # died idle: no job lost
                self._reap(slot, None)
            if self.workers[slot] is None:
                self._start(slot)
        for slot in idle:
            task = self.running[slot] = self.pending.popleft()
            # A worker that died meanwhile fails the job (_collect): handing it to the next worker
            # could respawn a failing worker forever.
            with contextlib.suppress(OSError):
                self.workers[slot].conn.send(tasks[task])

    def _start(self, slot: int) -> _Worker:
        ours, theirs = self.context.Pipe()
        process = self.context.Process(
            target=_serve,
            args=(theirs, self.slots[slot], self.visible, self.threads, os.getpid()),
            name=f"pool-worker-{slot}",
            # should this process end past _close, multiprocessing's exit handler SIGTERMs them
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
        """Reap every worker: idle ones leave when their pipe closes; `stop` also SIGTERMs them
        (_serve). A second stop signal meanwhile kills them."""
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
    """Around a worker's start: it inherits SIGINT ignored (Ctrl-C reaches the whole process group,
    but the launcher decides what it means), and SIGINT/SIGTERM wait, blocked, until the worker is
    on the books, so that none is started unknown (_serve lifts the mask, should it inherit it)."""
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
    """A worker's life: pin to `device`, then run the jobs the launcher sends until it closes the
    pipe. SIGINT is ignored (the launcher tells the workers with SIGTERM). SIGTERM, even while the
    worker starts, unwinds the running job as Ctrl-C does (its checkpoint kept for a rerun), and
    the worker exits with status STOPPED."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt_once)
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        _die_with(launcher)
        _pin_worker(device, visible, threads)
        while True:
            try:
                fn, payload = conn.recv()
            except EOFError:  # the launcher closed the pipe: no more jobs
                return
            conn.send(_answer(fn, payload))
    except KeyboardInterrupt:
        sys.exit(STOPPED)  # without a traceback: the launcher says which jobs were stopped


def _answer(fn: Callable[[bytes], bytes], payload: bytes) -> tuple:
    try:
        return ("ok", fn(payload))
    except Exception:  # outside the run (train.run records its own failures)
        return ("raised", traceback.format_exc())


def _interrupt_once(signum: int, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not break the unwinding
    raise KeyboardInterrupt


def _die_with(launcher: int) -> None:
    """Have the kernel SIGTERM this worker when the launcher dies, even by SIGKILL (Linux's
    PR_SET_PDEATHSIG; elsewhere an idle worker leaves when its pipe closes)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != launcher:  # the launcher died before that was set
        sys.exit(STOPPED)

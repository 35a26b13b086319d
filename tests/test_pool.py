"""The pool launcher: long-lived workers pinned to device slots, each job a complete, independent record."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from hydra_plugins.sweeper_pool._workers import threads_per_worker
from hydra_plugins.sweeper_pool.launcher import resolve_devices
from tests.conftest import REPO, TINY, run_cli

RECORD = {"config.json", "job.json", "metrics.jsonl", "losses.npz", "summary.json", "checkpoint.pt"}


def without_times(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in rows]


@pytest.mark.slow  # over 8 s: CI's slow step runs it
def test_jobs_spread_over_device_slots_on_reused_workers(tmp_path):
    # One CPU thread each, stated: CPU kernels reduce in another order on another thread count,
    # so only the same trainer.threads gives the same numbers, whatever the launcher and cores.
    grid = ["lr=0.2,0.1,0.05,0.02", "trainer.threads=1"]
    pooled = run_cli(
        "-m", "hydra/launcher=pool", "hydra.launcher.devices=[cpu]", "hydra.launcher.slots_per_device=2",
        *TINY, *grid, f"hydra.sweep.dir={tmp_path / 'pool'}", cwd=tmp_path,
    )  # fmt: skip
    assert pooled.returncode == 0, pooled.stderr[-2000:]
    jobs = [json.loads((tmp_path / "pool" / str(n) / "job.json").read_text()) for n in range(4)]
    # (GPU slots are pinned as test_a_workers_gpu_index_counts_the_gpus_the_launcher_sees shows)
    assert {j["cuda_visible_devices"] for j in jobs} == {""}  # CPU slots: their workers see no GPU
    assert len({j["pid"] for j in jobs}) == 2  # two workers, each ran two jobs: start-up paid once
    threads = {
        json.loads((tmp_path / "pool" / str(n) / "summary.json").read_text())["torch_threads"]
        for n in range(4)
    }
    assert threads == {1}  # the stated count, not the workers' share of the cores
    for n in range(4):
        assert {p.name for p in (tmp_path / "pool" / str(n)).iterdir()} >= RECORD
        assert json.loads((tmp_path / "pool" / str(n) / "summary.json").read_text())["status"] == "completed"

    # a pooled job computes exactly what the same job computes under the basic launcher
    basic = run_cli("-m", *TINY, *grid, f"hydra.sweep.dir={tmp_path / 'basic'}", cwd=tmp_path)
    assert basic.returncode == 0
    for n in range(4):
        assert without_times(tmp_path / "pool" / str(n) / "metrics.jsonl") == without_times(
            tmp_path / "basic" / str(n) / "metrics.jsonl"
        )


def test_auto_devices_fall_back_to_the_cpu_without_a_gpu():
    import torch

    expected = [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else ["cpu"]
    assert resolve_devices(["auto"]) == expected
    assert resolve_devices([2, 3]) == ["2", "3"]


def test_fuse_trains_compatible_jobs_as_one_program_with_separate_records(tmp_path):
    grid = ["lr=0.1,0.05", "trainer.seed=0,1", "trainer.channels_last=false"]
    fused = run_cli(
        "-m",
        "hydra/launcher=pool",
        "hydra.launcher.fuse=true",
        *TINY,
        *grid,
        f"hydra.sweep.dir={tmp_path / 'fused'}",
        cwd=tmp_path,
    )
    assert fused.returncode == 0, fused.stderr[-2000:]
    assert "fusing jobs [0, 1, 2, 3] into one program" in fused.stdout + fused.stderr
    basic = run_cli("-m", *TINY, *grid, f"hydra.sweep.dir={tmp_path / 'basic'}", cwd=tmp_path)
    assert basic.returncode == 0
    for n in range(4):
        run = tmp_path / "fused" / str(n)
        assert {p.name for p in run.iterdir()} >= RECORD | {".hydra"}
        assert json.loads((run / "summary.json").read_text())["fused_trials"] == 4
        # as Hydra's run_job sets it for a solo job (it was ???, and the saved config did not resolve)
        hydra_yaml = OmegaConf.load(run / ".hydra" / "hydra.yaml")
        assert hydra_yaml.hydra.runtime.output_dir == str(run.absolute())
        assert json.loads((run / "config.json").read_text()) == json.loads(
            (tmp_path / "basic" / str(n) / "config.json").read_text()
        )
        for a, b in zip(
            without_times(run / "metrics.jsonl"),
            without_times(tmp_path / "basic" / str(n) / "metrics.jsonl"),
            strict=True,
        ):
            assert a["test_loss"] == pytest.approx(b["test_loss"], rel=2e-3)


def test_fuse_says_why_a_job_runs_alone(tmp_path):
    result = run_cli(
        "-m", "hydra/launcher=pool", "hydra.launcher.fuse=true", *TINY, "optim=sgd,adam",
        f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout + result.stderr
    assert "job #1 runs alone: fused trials need plain optim=sgd" in out
    assert "job #0 runs alone: no other job shares its model, data and trainer" in out


def test_fused_jobs_keep_a_log_each_and_write_no_hydra_files_when_asked_not_to(tmp_path):
    result = run_cli(
        "-m", "hydra/launcher=pool", "hydra.launcher.fuse=true", *TINY, "lr=0.1,0.05", "hydra.output_subdir=null",
        f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    for n in (0, 1):
        run = tmp_path / "s" / str(n)
        assert not (run / ".hydra").exists()  # Hydra's run_job writes none with output_subdir=null
        text = (run / "train.log").read_text()
        assert "2 trials fused" in text  # the group's lines, in each trial's log
        # ... and the trial's own epochs, not the other's (every trial's log had every line)
        assert f"{n}: epoch 2/2 lr" in text and f"{1 - n}: epoch" not in text


def test_a_fused_trial_whose_record_fails_fails_alone_and_the_others_train_on(tmp_path, monkeypatch):
    # Its run dir's disk fails (EIO). Before, the group's one `except` recorded every trial failed
    # with job 1's error, and with the in-process worker the error escaped and ended the sweep.
    import errno
    import sys

    from hydra.core.global_hydra import GlobalHydra

    from sweeper.__main__ import main
    from sweeper.runlog import RunLog

    real = RunLog.append_metrics

    def append(self, row):
        if self.dir.name == "1":
            raise OSError(errno.EIO, "Input/output error")
        real(self, row)

    monkeypatch.setattr(RunLog, "append_metrics", append)
    argv = ["sweeper", "-m", "hydra/launcher=pool", "hydra.launcher.devices=[cpu]", "hydra.launcher.fuse=true",
            *TINY, "lr=0.2,0.1,0.05", f"hydra.sweep.dir={tmp_path}"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as ended:
        main()
    GlobalHydra.instance().clear()
    assert ended.value.code == 1
    summaries = [json.loads((tmp_path / str(n) / "summary.json").read_text()) for n in range(3)]
    assert [s["status"] for s in summaries] == ["completed", "failed", "completed"]
    assert summaries[1]["error"] == "OSError: [Errno 5] Input/output error"
    assert [s["epochs_done"] for s in summaries] == [2, 0, 2]


@pytest.mark.parametrize("fuse", ["false", "true"])
def test_a_job_raising_outside_its_run_in_this_process_fails_and_the_sweep_goes_on(
    tmp_path, monkeypatch, fuse
):
    import sys

    from hydra.core.global_hydra import GlobalHydra

    from hydra_plugins.sweeper_pool import launcher
    from sweeper.__main__ import main

    def broken(payload):
        raise RuntimeError("outside the run")

    from hydra.core.plugins import Plugins

    Plugins.instance()  # Hydra's plugin scan executes launcher.py again: scanned first, then patched
    monkeypatch.setattr(launcher, "_run_fused" if fuse == "true" else "_run_one", broken)
    argv = ["sweeper", "-m", "hydra/launcher=pool", "hydra.launcher.devices=[cpu]", f"hydra.launcher.fuse={fuse}",
            *TINY, "trainer.epochs=1", "lr=0.1,0.05", f"hydra.sweep.dir={tmp_path}"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as ended:  # the summary's: not every job completed
        main()
    GlobalHydra.instance().clear()
    assert ended.value.code == 1
    for n in range(2):
        summary = json.loads((tmp_path / str(n) / "summary.json").read_text())
        assert summary["status"] == "failed"
        assert "outside the run" in summary["error"]


def test_a_fused_job_started_over_sets_its_hydra_files_aside_with_its_record(tmp_path):
    def sweep(*extra):
        return run_cli(
            "-m", "hydra/launcher=pool", "hydra.launcher.fuse=true", *TINY, "lr=0.1,0.05", *extra,
            f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path,
        )  # fmt: skip

    assert sweep().returncode == 0
    first = (tmp_path / "s" / "0" / ".hydra" / "overrides.yaml").read_text()
    assert sweep("trainer.resume=false").returncode == 0
    run = tmp_path / "s" / "0"
    assert (run / "attempts" / "1" / ".hydra" / "overrides.yaml").read_text() == first
    assert "trainer.resume=false" in (run / ".hydra" / "overrides.yaml").read_text().lower()
    assert not list(run.glob(".hydra.pending-*"))  # Hydra's files of this invocation moved in


@pytest.mark.parametrize("fuse", ["false", "true"])
def test_one_cpu_worker_is_this_process(tmp_path, monkeypatch, fuse):
    # No GPU to pin and one slot: spawning a worker would only import torch a second time.
    import os
    import sys

    from hydra.core.global_hydra import GlobalHydra

    from sweeper.__main__ import main

    argv = ["sweeper", "-m", "hydra/launcher=pool", "hydra.launcher.devices=[cpu]", f"hydra.launcher.fuse={fuse}",
            *TINY, "trainer.epochs=1", "lr=0.1,0.05", f"hydra.sweep.dir={tmp_path}"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    GlobalHydra.instance().clear()
    main()
    GlobalHydra.instance().clear()
    for n in range(2):
        assert json.loads((tmp_path / str(n) / "summary.json").read_text())["status"] == "completed"
        assert json.loads((tmp_path / str(n) / "job.json").read_text())["pid"] == os.getpid()


def test_a_single_worker_runs_here_on_the_cpu_or_gpu_0_only():
    from hydra_plugins.sweeper_pool.launcher import runs_here

    assert runs_here(["0"], 1)
    # the CPU beside a GPU needs a process that cannot see the GPU (trainer.device=auto would pick it)
    assert runs_here(["cpu"], 1) == (not torch.cuda.is_available())
    # GPU 1 must be pinned in its own process, so that cuda:0 there means GPU 1, as in any worker
    assert not runs_here(["1"], 1) and not runs_here(["0"], 2) and not runs_here(["0", "1"], 2)


def test_a_workers_gpu_index_counts_the_gpus_the_launcher_sees(monkeypatch):
    # Under CUDA_VISIBLE_DEVICES=2,3 (a SLURM allocation, say), device 1 is physical GPU 3.
    import os

    from hydra_plugins.sweeper_pool._workers import _pin_worker

    for visible, device, pinned in (
        ("2,3", "1", "3"),
        (None, "1", "1"),
        ("2,3", "cpu", ""),
        (None, "cpu", ""),
    ):
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # so that the worker's setting is undone after
        _pin_worker(device, visible, torch.get_num_threads())
        assert os.environ["CUDA_VISIBLE_DEVICES"] == pinned


def test_gpu_indices_beyond_the_visible_gpus_are_refused(monkeypatch):
    # A worker pinned to a GPU it cannot see would train on the CPU without a word.
    from hydra_plugins.sweeper_pool.launcher import PoolLauncher

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # under CUDA_VISIBLE_DEVICES=2,3, say
    assert PoolLauncher(devices=[0, 1]).devices == ["0", "1"]
    with pytest.raises(
        ValueError, match=r"sees 2 GPUs; allowed values are \[auto\], \[cpu\] or indices 0\.\.1"
    ):
        PoolLauncher(devices=[0, 2])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(
        ValueError, match=r"devices=\['0'\] is invalid: this process sees no GPUs; allowed values are"
    ):
        PoolLauncher(devices=0)
    assert PoolLauncher(devices="cpu").devices == ["cpu"]


@pytest.mark.parametrize("devices", [["gpu1"], ["auto", 0], [], ["cuda:1"], None, "gpu", 1.5])
def test_bad_devices_are_refused_with_the_allowed_values(devices):
    from hydra_plugins.sweeper_pool.launcher import PoolLauncher

    with pytest.raises(
        ValueError, match=r"hydra.launcher.devices=.* is invalid: allowed values are \[auto\], \[cpu\]"
    ):
        PoolLauncher(devices=devices)


@pytest.mark.parametrize(
    "devices, named", [("cpu", ["cpu"]), (0, ["0"]), ("auto", ["auto"]), ([0, 1], ["0", "1"])]
)
def test_one_device_may_be_given_without_a_list(devices, named, monkeypatch):
    from hydra_plugins.sweeper_pool.launcher import PoolLauncher

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)

    assert PoolLauncher(devices=devices).devices == named


# -- stopping a pool sweep, and losing a worker: real processes, real signals

POOL = ["-m", "hydra/launcher=pool", "hydra.launcher.devices=cpu", "hydra.launcher.slots_per_device=2", *TINY]


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields from the state on (field 3), or None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def running(pid: int) -> bool:
    """Whether a process runs: a zombie (exited, not yet reaped by its parent or init) does not."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """The running processes of a process group."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [pid for pid in pids if (fields := _stat(pid)) and int(fields[2]) == pgid and fields[0] != "Z"]


def wait_until(condition, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def all_gone(launcher: subprocess.Popen) -> None:
    """Nothing of the sweep runs on: its workers are gone, and so, a moment after the launcher,
    is multiprocessing's resource tracker (it leaves when the launcher's end of its pipe closes)."""
    wait_until(lambda: group_members(launcher.pid) == [], timeout=10, what="the sweep's processes to exit")


@pytest.fixture
def start_sweep(tmp_path):
    """Start `python -m sweeper ARGS` in a process group of its own (as a shell's job), its output
    in a file; at the end, whatever is left of the group is killed, pass or fail."""
    started = []

    def start(*args: str) -> subprocess.Popen:
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
        out = open(tmp_path / f"out{len(started)}.txt", "w")  # noqa: SIM115 (closed below)
        process = subprocess.Popen(
            [sys.executable, "-m", "sweeper", *args], cwd=tmp_path, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        process.out = Path(out.name)
        started.append((process, out))
        return process

    yield start
    for process, out in started:
        for pid in group_members(process.pid):
            os.kill(pid, signal.SIGKILL)
        process.wait(timeout=30)
        out.close()


def trained_an_epoch(sweep: Path, *nums: int):
    return lambda: all((sweep / str(n) / "checkpoint.pt").exists() for n in nums)


def assert_left_to_resume(run: Path) -> None:
    """An interrupted run, as train.run leaves one: its last checkpoint, no summary, and its
    worker gone (a rerun would be refused while it runs)."""
    assert (run / "checkpoint.pt").exists() and (run / "metrics.jsonl").read_text()
    assert not (run / "summary.json").exists()
    assert not running(json.loads((run / "job.json").read_text())["pid"])


def test_ctrl_c_stops_a_pool_sweep_its_running_jobs_and_its_queue(tmp_path, start_sweep):
    sweep = tmp_path / "sweep"
    grid = ["trainer.epochs=100", "lr=0.1,0.05,0.02,0.01", f"hydra.sweep.dir={sweep}"]
    launcher = start_sweep(*POOL, *grid)
    wait_until(trained_an_epoch(sweep, 0, 1), what="jobs 0 and 1 to train an epoch")
    os.killpg(launcher.pid, signal.SIGINT)  # Ctrl-C at a terminal: the whole foreground group
    # Python ends on an interrupt by SIGINT, which a shell reports as 130 (and stops its script)
    assert launcher.wait(timeout=60) == -signal.SIGINT
    out = launcher.out.read_text()
    all_gone(launcher)  # every worker reaped, none left training
    for n in (0, 1):
        assert_left_to_resume(sweep / str(n))
    assert not (sweep / "2").exists() and not (sweep / "3").exists()  # the queue was dropped
    assert "SIGINT: sweep stopped. Interrupted: jobs 0, 1" in out and "not started: jobs 2, 3" in out
    # the usual summary, from the records: jobs 0 and 1 stopped, to be resumed, 2 and 3 not started
    assert f"sweep {sweep}: 4 jobs: 0 completed, 2 interrupted, 2 missing" in out
    assert "Traceback" not in out  # the records and the summary say it all


@pytest.mark.slow  # about 5 s: a whole sweep
def test_ctrl_c_of_a_sweep_on_hydras_basic_launcher_prints_its_summary_too(tmp_path, start_sweep):
    sweep = tmp_path / "sweep"
    launcher = start_sweep("-m", *TINY, "trainer.epochs=100", "lr=0.1,0.05", f"hydra.sweep.dir={sweep}")
    wait_until(trained_an_epoch(sweep, 0), what="job 0 to train an epoch")
    os.killpg(launcher.pid, signal.SIGINT)
    assert launcher.wait(timeout=60) == -signal.SIGINT
    out = launcher.out.read_text()
    assert_left_to_resume(sweep / "0")
    # Before, Hydra's basic launcher ended without its end callback: no summary, a traceback.
    assert f"sweep {sweep}: 2 jobs: 0 completed, 1 interrupted, 1 missing" in out
    assert out.count(f"sweep {sweep}: 2 jobs") == 1 and "Traceback" not in out


@pytest.mark.slow  # over 8 s: CI's slow step runs it
def test_sigterm_to_the_launcher_alone_stops_its_workers_and_a_rerun_resumes(tmp_path, start_sweep):
    # What `timeout` or a job manager sends: to the launcher only, not to its workers.
    sweep = tmp_path / "sweep"
    # 30 epochs: on a loaded machine one worker can start seconds after the other, and a shorter
    # job would complete before the signal comes.
    grid = ["trainer.epochs=30", "lr=0.1,0.05", f"hydra.sweep.dir={sweep}"]
    launcher = start_sweep(*POOL, *grid)
    wait_until(trained_an_epoch(sweep, 0, 1), what="jobs 0 and 1 to train an epoch")
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=60) == 128 + signal.SIGTERM
    out = launcher.out.read_text()
    all_gone(launcher)
    for n in (0, 1):
        assert_left_to_resume(sweep / str(n))
    assert f"sweep {sweep}: 2 jobs: 0 completed" in out

    rerun = run_cli(*POOL, *grid, cwd=tmp_path)  # not refused: nobody is training those runs
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    for n in (0, 1):  # resumed from their checkpoints: every epoch once
        assert json.loads((sweep / str(n) / "job.json").read_text())["restarts"] == 1
        assert [r["epoch"] for r in without_times(sweep / str(n) / "metrics.jsonl")] == list(range(1, 31))
        assert not (sweep / str(n) / "attempts").exists()


@pytest.mark.slow  # over 8 s: CI's slow step runs it
def test_a_dead_worker_stops_its_job_alone_a_fresh_worker_takes_its_slot_and_a_rerun_resumes(
    tmp_path, start_sweep
):
    # The OOM killer's SIGKILL to one worker. Job 0 is long, and each other job outlasts job 0's
    # first epoch, so that the fresh worker still finds a job waiting (with shorter ones, on a
    # loaded machine, the sibling had trained them all before the kill).
    sweep = tmp_path / "sweep"
    grid = ["trainer.epochs=60,6,6,6", f"hydra.sweep.dir={sweep}"]
    launcher = start_sweep(*POOL, *grid)
    wait_until(trained_an_epoch(sweep, 0), what="job 0 to train an epoch")
    worker = json.loads((sweep / "0" / "job.json").read_text())["pid"]
    os.kill(worker, signal.SIGKILL)
    assert launcher.wait(timeout=90) == 1  # not every job completed
    out = launcher.out.read_text()
    all_gone(launcher)
    assert "BrokenProcessPool" not in out and f"sweep {sweep}: 4 jobs: 3 completed, 1 interrupted" in out
    assert f"worker process {worker} died (signal 9, SIGKILL: out of memory?)" in out
    # Its epochs up to the checkpoint are sound: left unclosed, as a Ctrl-C leaves a run. Closed
    # as failed, a rerun set it aside and trained it from epoch 1 again.
    assert not (sweep / "0" / "summary.json").exists()
    pids = {json.loads((sweep / str(n) / "job.json").read_text())["pid"] for n in range(4)}
    assert worker in pids and len(pids) == 3  # the sibling trained on; a fresh worker replaced the dead one

    done = len(without_times(sweep / "0" / "metrics.jsonl"))
    from sweeper import rundir

    run = sweep / "0"
    cfg = OmegaConf.create(json.loads((run / "config.json").read_text()))
    record, ended = rundir.open_record(cfg, run, job_num=0)
    assert ended is None and not (run / "attempts").exists()  # resumes: nothing set aside
    assert record.why_not_resumable() is None and done >= 1


def test_a_worker_dead_before_its_jobs_first_checkpoint_fails_the_job(tmp_path):
    from hydra_plugins.sweeper_pool._workers import WorkerDied
    from sweeper import rundir
    from tests.conftest import compose_cfg

    cfg = compose_cfg()
    run = tmp_path / "run"
    rundir.open_record(cfg, run, job_num=0)  # opened by the worker, which died before epoch 1 ended
    job = json.loads((run / "job.json").read_text())
    died = WorkerDied("worker process 1 died (signal 9, SIGKILL: out of memory?)")
    rundir.record_lost(cfg, run, [], 0, died, job["pid"], job["pid_started"], resumable=True)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["error"] == "WorkerDied: worker process 1 died (signal 9, SIGKILL: out of memory?)"


def test_workers_do_not_outlive_a_killed_launcher(tmp_path, start_sweep):
    # SIGKILL cannot be caught: the kernel tells each worker (PR_SET_PDEATHSIG), which stops its
    # job as on SIGTERM, leaving the run to resume.
    sweep = tmp_path / "sweep"
    launcher = start_sweep(*POOL, "trainer.epochs=100", "lr=0.1,0.05", f"hydra.sweep.dir={sweep}")
    wait_until(trained_an_epoch(sweep, 0, 1), what="jobs 0 and 1 to train an epoch")
    launcher.kill()
    launcher.wait(timeout=30)
    all_gone(launcher)
    for n in (0, 1):
        assert_left_to_resume(sweep / str(n))


def test_threads_per_worker_share_the_cpus_and_keep_the_users_setting(monkeypatch):
    import os

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert [threads_per_worker(n) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_worker(4) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")  # OpenMP's per-level list: the first level's
    assert threads_per_worker(4) == 4
    for unusable in ("0", "many", ""):  # set_num_threads(0) failed in every worker; int("many") here
        monkeypatch.setenv("OMP_NUM_THREADS", unusable)
        assert threads_per_worker(2) == 4


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_while_the_workers_still_start_is_clean(tmp_path, start_sweep, signum):
    """Ctrl-C (to the whole group) or SIGTERM (to the launcher) 0.3 s after the launch line, while
    both workers are still importing torch: the sweep stops as at any other time, with the
    summary and the signal's status, and without a traceback from a worker."""
    sweep = tmp_path / "sweep"
    launcher = start_sweep(*POOL, "lr=0.1,0.05", f"hydra.sweep.dir={sweep}")
    wait_until(lambda: "Launching 2 jobs on 2 workers" in launcher.out.read_text(), what="the launch")
    time.sleep(0.3)
    if signum == signal.SIGINT:
        os.killpg(launcher.pid, signal.SIGINT)
        assert launcher.wait(timeout=60) == -signal.SIGINT
    else:
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=60) == 128 + signal.SIGTERM
    out = launcher.out.read_text()
    all_gone(launcher)
    assert f"sweep {sweep}: 2 jobs: 0 completed" in out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out


def test_a_job_run_in_this_process_leaves_no_log_file_to_the_next_jobs(hydra_sweep_runner, tmp_path):
    """Each job's log file ends with the job, as on Hydra's basic launcher: the next batch's
    launch lines (one job a batch) go to the console, not into job 0's log."""
    sweep = hydra_sweep_runner(
        calling_file=None,
        calling_module="hydra.test_utils.a_module",
        task_function=lambda cfg: logging.getLogger("job").info(f"job a={cfg.a}"),
        config_path="configs",
        config_name="compose",
        overrides=["hydra/launcher=pool", "hydra.sweeper.max_batch_size=1", "+a=1,2,3"],
        temp_dir=tmp_path,
    )
    with sweep:  # (its files are gone after the block)
        assert [len(batch) for batch in sweep.returns] == [1, 1, 1]
        for n in range(3):
            text = (tmp_path / str(n) / "a_module.log").read_text()
            assert f"job a={n + 1}" in text  # the job's own line
            assert "Launching" not in text and text.count("job a=") == 1, text


def test_fuse_never_trains_another_optimizer_as_plain_sgd(tmp_path):
    """optim._target_=torch.optim.ASGD keeps optim.name=sgd: fused, it trained as plain SGD and
    "completed". With sgd's own keys it is refused before launch (ASGD takes no momentum); with
    ASGD's, each job runs alone, as its solo run does, and trains with ASGD."""
    asgd = [*TINY, "optim._target_=torch.optim.ASGD", "lr=0.1,0.05"]
    result = run_cli(
        "-m", "hydra/launcher=pool", "hydra.launcher.fuse=true", *asgd, f"hydra.sweep.dir={tmp_path / 'r'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2 and not (tmp_path / "r").exists()
    assert "optim.momentum is not an argument of torch.optim.ASGD" in result.stderr
    result = run_cli(
        "-m", "hydra/launcher=pool", "hydra.launcher.fuse=true", *asgd, "~optim.momentum", "~optim.nesterov",
        f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "fusing jobs" not in out
    for n in (0, 1):
        assert f"job #{n} runs alone: fused trials need plain optim=sgd" in out
        summary = json.loads((tmp_path / "s" / str(n) / "summary.json").read_text())
        config = json.loads((tmp_path / "s" / str(n) / "config.json").read_text())
        assert summary["status"] == "completed" and config["optim"]["_target_"] == "torch.optim.ASGD"


def test_a_stated_trainer_threads_is_the_jobs_and_auto_keeps_the_workers_share():
    """The pool's share of the cores per worker is for trainer.threads=auto; a stated count is
    the job's, and the next job on the same worker starts from the worker's share again."""
    from hydra_plugins.sweeper_pool.launcher import _job_threads

    before = torch.get_num_threads()
    torch.set_num_threads(3)  # the worker's share
    try:
        with _job_threads(OmegaConf.create({"trainer": {"threads": 1}})):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 3
        for other in ({"trainer": {"threads": "auto"}}, {"foo": 10}):  # auto; another Hydra app
            with _job_threads(OmegaConf.create(other)):
                assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_pool_workers_import_the_users_model_from_a_config_dir(tmp_path):
    """A user's `_target_` in the launch dir, its option in --config-dir: each spawned worker
    imports the module and composes the job with that search path."""
    from tests.test_search_path import MODULE

    (tmp_path / "mynets.py").write_text(MODULE)
    (tmp_path / "myconf" / "model").mkdir(parents=True)
    (tmp_path / "myconf" / "model" / "mlp.yaml").write_text(
        "_target_: mynets.MLP\nname: mlp\nl1: 0.0\nhidden: 8\n"
    )
    small = [a for a in TINY if not a.startswith("model.")]
    result = run_cli(
        "-m", "--config-dir", "myconf", "hydra/launcher=pool", "hydra.launcher.devices=[cpu]",
        "hydra.launcher.slots_per_device=2", "model=mlp", "model.hidden=8,16", *small,
        f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [json.loads((tmp_path / "sweep" / str(n) / "job.json").read_text()) for n in range(2)]
    assert len({j["pid"] for j in jobs}) == 2  # two spawned workers, one job each
    for n, hidden in enumerate((8, 16)):
        config = json.loads((tmp_path / "sweep" / str(n) / "config.json").read_text())
        assert config["model"] == {"_target_": "mynets.MLP", "name": "mlp", "l1": 0.0, "hidden": hidden}
        summary = json.loads((tmp_path / "sweep" / str(n) / "summary.json").read_text())
        assert summary["status"] == "completed"

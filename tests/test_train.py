"""A real short training run on CPU and the record it leaves; determinism, divergence, resume."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sweeper import rundir, train
from sweeper.processes import process_started
from sweeper.runlog import BIN_EDGES, RunLog
from sweeper.validate import ConfigError
from tests import fake_runs
from tests.conftest import REPO, TINY, compose_cfg, run_cli

# The analysis tests' fake records must be what runs write (a former column name read as today's).
METRIC_KEYS = set(fake_runs.METRIC_KEYS)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_times(rows):
    return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in rows]


def test_a_short_run_leaves_a_complete_record(tmp_path):
    cfg = compose_cfg(
        "trainer.epochs=3", "trainer.sample_loss_epochs=[1,2]", "trainer.keep_sample_losses=true"
    )
    summary = train.run(cfg, tmp_path, overrides=["trainer.epochs=3"])

    assert summary["status"] == "completed"
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["trainer"]["epochs"] == 3 and config["lr"] == 0.1 and "hydra" not in config
    assert json.loads((tmp_path / "job.json").read_text())["overrides"] == ["trainer.epochs=3"]

    rows = metrics(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(set(r) == METRIC_KEYS for r in rows)
    assert [r["samples"] for r in rows] == [300, 600, 900]
    assert [r["step"] for r in rows] == [6, 12, 18]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert all(0 <= r["test_acc"] <= 1 for r in rows)

    with np.load(tmp_path / "losses.npz", allow_pickle=False) as z:
        assert z["epochs"].tolist() == [1, 2, 3]  # kept epochs plus the last
        assert np.array_equal(z["bin_edges"], BIN_EDGES)
        for split, n in (("train", 300), ("test", 100)):
            counted = (
                z[f"{split}_hist"].sum(1) + z[f"{split}_zero"] + z[f"{split}_under"] + z[f"{split}_over"]
            )
            assert counted.tolist() == [n, n, n]
            assert np.all(np.diff(z[f"{split}_quantiles"], axis=1) >= 0)
        # the histogram mean agrees with the logged mean loss
        assert z["test_mean"][-1] == pytest.approx(rows[-1]["test_loss"], rel=1e-5)
    with np.load(tmp_path / "sample_losses" / "epoch_003.npz", allow_pickle=False) as raw:
        assert raw["train"].shape == (300,) and raw["train"].dtype == np.float32
        assert float(raw["test"].mean()) == pytest.approx(rows[-1]["test_loss"], rel=1e-5)

    done = json.loads((tmp_path / "summary.json").read_text())
    assert done["n_params"] > 0 and done["receptive_field_px"] == 22
    assert done["final_test_acc"] == rows[-1]["test_acc"]
    assert done["best_test_acc"] == max(r["test_acc"] for r in rows)
    assert done["min_test_loss_epoch"] == min(rows, key=lambda r: r["test_loss"])["epoch"]
    assert done["versions"]["torch"] and done["host"] and done["error"] is None
    assert done["cpu_count"] >= 1 and done["torch_threads"] >= 1  # CPU timings mean little without them
    assert (tmp_path / "checkpoint.pt").exists()


def test_same_seed_gives_identical_metrics_and_another_seed_does_not(tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train.run(
            compose_cfg(f"trainer.seed={seed}", "data.augment=true", "model.dropout=0.2"), tmp_path / name
        )
        runs[name] = without_times(metrics(tmp_path / name))
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def test_a_non_finite_loss_stops_the_run_as_diverged(tmp_path):
    summary = train.run(compose_cfg("lr=1e20", "trainer.epochs=5"), tmp_path)
    assert summary["status"] == "diverged"
    rows = metrics(tmp_path)
    assert len(rows) == 1 and rows[0]["train_loss"] is None  # stopped at once, NaN written as null
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"


def test_an_exception_is_recorded_as_failed_with_its_traceback(tmp_path, monkeypatch):
    def broken_model(*args, **kwargs):
        raise RuntimeError("CUDA error: out of memory")  # what a job may raise once it trains

    monkeypatch.setattr(train.build, "model", broken_model)
    summary = train.run(compose_cfg(), tmp_path / "run")
    assert summary["status"] == "failed"
    assert summary["error"] == "RuntimeError: CUDA error: out of memory"
    assert "Traceback" in summary["traceback"] and "broken_model" in summary["traceback"]
    assert summary["epochs_done"] == 0 and summary["final_test_acc"] is None


def test_a_run_failing_after_its_model_is_built_keeps_the_models_facts_in_its_summary(tmp_path, monkeypatch):
    def failing(self, row):
        raise RuntimeError("disk full")

    monkeypatch.setattr(RunLog, "append_metrics", failing)
    summary = train.run(compose_cfg(), tmp_path / "run")
    assert summary["status"] == "failed" and summary["error"] == "RuntimeError: disk full"
    assert summary["n_params"] > 0 and summary["n_train"] == 300 and summary["device"] == "cpu"
    assert "receptive_field_px" in summary and summary["cuda_graph"] is False


def test_a_slurm_time_limit_without_requeue_stops_the_run_for_a_resume_not_as_failed(tmp_path, monkeypatch):
    # submitit raises UncompletedJobError from its SIGUSR2 handler, wherever the run is, when a
    # timed-out job has no requeue left (or its preset does not requeue). Recorded as failed, the
    # run was started over from epoch 1 by the next rerun.
    from submitit.core.utils import UncompletedJobError

    from sweeper import sweep

    cfg = compose_cfg("trainer.epochs=4")
    append = RunLog.append_metrics

    def time_limit_after_epoch_2(self, row):
        append(self, row)
        if row["epoch"] == 2:
            raise UncompletedJobError("Job not requeued because: timed-out too many times.")

    monkeypatch.setattr(RunLog, "append_metrics", time_limit_after_epoch_2)
    with pytest.raises(UncompletedJobError):  # submitit's own, for its result file
        train.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "summary.json").exists()
    # the sweep's end summary, on a login node that cannot see the node's process: stopped
    assert sweep.job_state(tmp_path / "run", ended=True)[0] == "interrupted"
    monkeypatch.setattr(RunLog, "append_metrics", append)
    assert train.run(cfg, tmp_path / "run")["status"] == "completed"
    assert [r["epoch"] for r in metrics(tmp_path / "run")] == [1, 2, 3, 4]  # resumed, not restarted
    assert not (tmp_path / "run" / "attempts").exists()


def test_rerun_of_a_completed_run_is_skipped_untouched(tmp_path):
    cfg = compose_cfg()
    train.run(cfg, tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert train.run(cfg, tmp_path)["status"] == "completed"
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_a_run_dir_of_another_config_is_refused(tmp_path):
    train.run(compose_cfg(), tmp_path)
    with pytest.raises(ConfigError, match="another config.*lr: 0.1 -> 0.2"):
        train.run(compose_cfg("lr=0.2"), tmp_path)


def test_a_failed_run_is_set_aside_and_rerun(tmp_path):
    cfg = compose_cfg()
    log = RunLog(tmp_path)
    log.write_config(__import__("omegaconf").OmegaConf.to_container(cfg, resolve=True))
    log.write_summary({"status": "failed", "error": "boom"})
    assert train.run(cfg, tmp_path)["status"] == "completed"
    assert json.loads((tmp_path / "attempts" / "1" / "summary.json").read_text())["error"] == "boom"


def test_sigkill_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path):
    args = [
        "data=synthetic",
        "data.cache_dir=null",
        "data.generated_train=1000",
        "data.generated_test=200",
        "trainer.epochs=5",
        "model.channels=8",
        "data.augment=true",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(
        [sys.executable, "-m", "sweeper", *args, f"hydra.run.dir={tmp_path}/straight"],
        env=env,
        check=True,
        capture_output=True,
    )

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeper", *args, f"hydra.run.dir={killed}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not ((killed / "metrics.jsonl").exists() and len(metrics(killed)) >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(metrics(killed))
    assert 2 <= done_before < 5 and not (killed / "summary.json").exists()

    subprocess.run(
        [sys.executable, "-m", "sweeper", *args, f"hydra.run.dir={killed}"],
        env=env,
        check=True,
        capture_output=True,
    )
    resumed = metrics(killed)
    assert [r["epoch"] for r in resumed] == [1, 2, 3, 4, 5]  # no gap, no duplicate
    assert without_times(resumed) == without_times(metrics(tmp_path / "straight"))
    assert json.loads((killed / "job.json").read_text())["restarts"] == 1


def test_channels_last_computes_what_the_plain_layout_computes(tmp_path):
    # The CPU default (channels_last=auto) changes the memory layout only: same seed, same curves
    # up to float32 summation order.
    rows = {}
    for layout in ("true", "false"):
        train.run(compose_cfg(f"trainer.channels_last={layout}", "trainer.epochs=2"), tmp_path / layout)
        rows[layout] = without_times(metrics(tmp_path / layout))
    for a, b in zip(rows["true"], rows["false"], strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_where_data_is_cached_or_whether_the_step_is_graphed_does_not_block_a_resume():
    config_difference = rundir.config_difference
    assert config_difference({"data": {"cache_dir": "/a"}}, {"data": {"cache_dir": "/b"}}) == []
    # a record made before trainer.cuda_graph existed resumes (the checkpoint format is the same)
    assert config_difference({"trainer": {}}, {"trainer": {"cuda_graph": "auto"}}) == []
    assert config_difference({"data": {"n_train": 1}}, {"data": {"n_train": 2}}) == ["data.n_train: 1 -> 2"]


def test_a_record_made_before_a_key_existed_resumes_where_the_key_keeps_the_old_behaviour():
    # Records without trainer.threads ran on the threads they were given: `auto`.
    assert rundir.config_difference({"trainer": {}}, {"trainer": {"threads": "auto"}}) == []
    assert rundir.config_difference({"trainer": {}}, {"trainer": {"threads": 1}}) == [
        "trainer.threads: 'auto' -> 1"
    ]


def pretend_still_training(run_dir, pid):
    """Make the record in `run_dir` look unfinished and written by the live process `pid`, as a
    run still training in another shell does."""
    (run_dir / "summary.json").unlink()
    job = json.loads((run_dir / "job.json").read_text())
    (run_dir / "job.json").write_text(json.dumps({**job, "pid": pid, "pid_started": process_started(pid)}))


def tree(run_dir):
    """Every file under `run_dir` with its bytes: what a refused run must leave as it was."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("resume", ["true", "false"])
def test_a_run_that_a_live_process_still_trains_is_refused_whether_resuming_or_starting_over(
    tmp_path, resume
):
    # Resuming would append to the live writer's metrics.jsonl; starting over would move its
    # record out from under it. Either way the record must stay the live process's alone.
    train.run(compose_cfg(), tmp_path)
    with subprocess.Popen(["sleep", "60"]) as writer:
        try:
            pretend_still_training(tmp_path, writer.pid)
            before = tree(tmp_path)
            with pytest.raises(ConfigError, match=f"is being trained by process {writer.pid} on this host"):
                train.run(compose_cfg(f"trainer.resume={resume}"), tmp_path)
        finally:
            writer.kill()
    assert tree(tmp_path) == before and not (tmp_path / "attempts").exists()


def single_run(tmp_path, *args):
    return run_cli(*TINY, "trainer.epochs=1", *args, cwd=tmp_path)


@pytest.mark.slow  # over 8 s: CI's slow step runs it
def test_a_refused_single_run_leaves_the_record_and_its_hydra_files_as_they_were(tmp_path):
    # Hydra writes .hydra/ before the task runs: the refusals must come first, and leave no run
    # dir of their own either (cwd is tmp_path, where outputs/runs/<date>/<time>/ would appear).
    run_dir = tmp_path / "D"
    first = single_run(tmp_path, f"hydra.run.dir={run_dir}")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "lr: 0.1" in (run_dir / ".hydra" / "config.yaml").read_text()
    before = tree(run_dir)
    other = single_run(tmp_path, f"hydra.run.dir={run_dir}", "lr=0.05")
    assert other.returncode == 2 and other.stderr.splitlines()[-1].startswith("error: ")
    assert "already holds a run of another config (lr: 0.1 -> 0.05)" in other.stderr
    invalid = single_run(tmp_path, f"hydra.run.dir={run_dir}", "lr=-5")
    assert invalid.returncode == 2 and "lr=-5 is invalid" in invalid.stderr
    assert tree(run_dir) == before
    invalid_fresh = single_run(tmp_path, "lr=-5")  # into the default, time-stamped run dir
    assert invalid_fresh.returncode == 2 and not (tmp_path / "outputs").exists()
    with subprocess.Popen(["sleep", "60"]) as writer:
        try:
            pretend_still_training(run_dir, writer.pid)
            before = tree(run_dir)
            second = single_run(tmp_path, f"hydra.run.dir={run_dir}")
        finally:
            writer.kill()
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [
        f"error: {run_dir} is being trained by process {writer.pid} on this host; "
        "wait for it to end (or stop it), or use another output dir"
    ]
    assert tree(run_dir) == before


def test_starting_a_single_run_over_sets_its_hydra_files_and_log_aside_with_its_record(tmp_path):
    run_dir = tmp_path / "D"
    first = single_run(tmp_path, f"hydra.run.dir={run_dir}")
    assert first.returncode == 0, first.stderr[-2000:]
    old = tree(run_dir)
    again = single_run(tmp_path, f"hydra.run.dir={run_dir}", "lr=0.05", "trainer.resume=false")
    assert again.returncode == 0, again.stderr[-2000:]
    aside = tree(run_dir / "attempts" / "1")
    # the first attempt, byte for byte: its record, Hydra's files (lr 0.1) and its log
    assert aside == old and "lr: 0.1" in aside[".hydra/config.yaml"].decode()
    assert "lr: 0.05" in (run_dir / ".hydra" / "config.yaml").read_text()
    log = (run_dir / "train.log").read_text()
    assert "lr 0.05" in log and "lr 0.1 " not in log  # this attempt's lines only
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == [".hydra"]  # none pending


def test_an_interrupt_that_library_code_turns_into_another_error_leaves_the_run_to_resume(
    tmp_path, monkeypatch
):
    # A pool worker's SIGTERM raised inside np.savez came out as zipfile's ValueError, and the
    # stopped run was recorded as failed (then set aside) instead of left to resume.
    def interrupted_inside_a_library(cfg, record):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise ValueError("Can't close the ZIP file while there is an open writing handle on it") from None

    monkeypatch.setattr(train, "train", interrupted_inside_a_library)
    with pytest.raises(KeyboardInterrupt):
        train.run(compose_cfg(), tmp_path / "run")
    assert (tmp_path / "run" / "config.json").exists() and not (tmp_path / "run" / "summary.json").exists()


def interrupt_at_checkpoint(monkeypatch, cfg, run_dir, epoch: int) -> None:
    """Run `cfg` in `run_dir` and stop it as a kill would just before epoch `epoch`'s checkpoint
    is written: metrics.jsonl and losses.npz hold that epoch, checkpoint.pt the one before."""
    real = RunLog.save_checkpoint

    def save(self, state):
        if state["epoch"] == epoch:
            raise KeyboardInterrupt
        real(self, state)

    monkeypatch.setattr(RunLog, "save_checkpoint", save)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, run_dir)
    monkeypatch.setattr(RunLog, "save_checkpoint", real)


def test_a_resume_before_the_first_kept_epoch_keeps_no_later_histogram(tmp_path, monkeypatch):
    # sample_loss_epochs=[3]: killed between epoch 3's losses.npz and its checkpoint, the resume
    # from epoch 2 kept no histogram and crashed in np.stack([]); the run was then recorded failed.
    cfg = compose_cfg("trainer.epochs=4", "trainer.sample_loss_epochs=[3]")
    train.run(cfg, tmp_path / "straight")
    interrupt_at_checkpoint(monkeypatch, cfg, tmp_path / "run", 3)
    assert train.run(cfg, tmp_path / "run")["status"] == "completed"
    assert without_times(metrics(tmp_path / "run")) == without_times(metrics(tmp_path / "straight"))
    with (
        np.load(tmp_path / "run" / "losses.npz") as resumed,
        np.load(tmp_path / "straight" / "losses.npz") as z,
    ):
        assert resumed["epochs"].tolist() == z["epochs"].tolist() == [3, 4]
        assert (resumed["train_hist"] == z["train_hist"]).all()


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda d: (d / "metrics.jsonl").write_text("{broken\n" + "".join(
            line + "\n" for line in (d / "metrics.jsonl").read_text().splitlines()[1:])),
         "metrics.jsonl line 1 is damaged"),
        (lambda d: (d / "metrics.jsonl").write_bytes(b"\xff\xfe\n" + b"".join(
            line + b"\n" for line in (d / "metrics.jsonl").read_bytes().splitlines()[1:])),
         "metrics.jsonl line 1 is damaged"),
        (lambda d: (d / "metrics.jsonl").unlink(), "metrics.jsonl does not hold epochs 1..2"),
        (lambda d: (d / "checkpoint.pt").write_bytes((d / "checkpoint.pt").read_bytes()[:1000]),
         "checkpoint.pt does not load"),
        (lambda d: (d / "losses.npz").write_bytes((d / "losses.npz").read_bytes()[:100]),
         "losses.npz does not load"),
        # torch's zip reader checks no CRC: XORed bytes loaded as weights up to 135.8 and the run
        # ended `completed` with epochs 4-6 up to 30% off. The digest inside catches them.
        (lambda d: flip(d / "checkpoint.pt"), "checkpoint.pt is damaged: its content does not match its digest"),
        # A deleted losses.npz left a record whose histograms began at the resumed epoch.
        (lambda d: (d / "losses.npz").unlink(), "losses.npz is missing (epochs [1, 2] were kept)"),
        (lambda d: flip(d / "losses.npz"), "losses.npz does not load (BadZipFile)"),
        (lambda d: (d / "metrics.jsonl").write_text("[1, 2]\n" + "".join(
            line + "\n" for line in (d / "metrics.jsonl").read_text().splitlines()[1:])),
         "metrics.jsonl line 1 is damaged: not a JSON object (list)"),
    ],
    ids=["a-damaged-line-before-the-last", "a-line-not-utf8", "no-metrics", "truncated-checkpoint",
         "truncated-losses", "flipped-checkpoint", "no-losses", "flipped-losses", "a-line-not-an-object"],
)  # fmt: skip
def test_a_record_damaged_from_outside_is_set_aside_whole_not_resumed_from_what_survives(
    tmp_path, monkeypatch, caplog, damage, why
):
    # A damaged line 2 of 4 used to cut metrics.jsonl there, losing epochs 3 and 4, and the resumed
    # epochs counted step, samples and time from the wrong line. A crash leaves at most a
    # truncated last line; anything else is set aside whole and the run starts over.
    cfg = compose_cfg("trainer.epochs=3")
    train.run(cfg, tmp_path / "straight")
    run_dir = tmp_path / "run"
    interrupt_at_checkpoint(monkeypatch, cfg, run_dir, 3)
    damage(run_dir)
    damaged = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.suffix != ".log"}
    with caplog.at_level("INFO", logger="sweeper"):
        assert train.run(cfg, run_dir)["status"] == "completed"
    assert why in caplog.text
    kept = run_dir / "attempts" / "1"
    assert {name: (kept / name).read_bytes() for name in damaged if name != "job.json"} == {
        name: data for name, data in damaged.items() if name != "job.json"
    }
    assert without_times(metrics(run_dir)) == without_times(metrics(tmp_path / "straight"))


def flip(path) -> None:
    """XOR 16 bytes in the middle of the file, as a failing disk or a bad copy might."""
    data = path.read_bytes()
    middle = len(data) // 2
    path.write_bytes(
        data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 16]) + data[middle + 16 :]
    )


@pytest.mark.parametrize("resume", [True, False])
@pytest.mark.parametrize(
    "damage", [b"{damaged", b"\xff\xfe", b"[1, 2]", b"42"], ids=["not-json", "not-utf8", "a-list", "a-number"]
)
def test_a_checkpoint_without_a_readable_config_is_never_resumed(tmp_path, monkeypatch, resume, damage):
    # Its config cannot be checked against this one: resumed, lr=0.1's optimizer state trained
    # on under config.json's lr=0.2, a mislabelled record. (Bytes that are not UTF-8 raised; a
    # JSON list or number raised TypeError in config_difference, which blocked the whole sweep.)
    run_dir = tmp_path / "run"
    interrupt_at_checkpoint(monkeypatch, compose_cfg("trainer.epochs=3"), run_dir, 3)
    (run_dir / "config.json").write_bytes(damage)
    cfg = compose_cfg("trainer.epochs=3", "lr=0.2", f"trainer.resume={resume}")
    assert train.run(cfg, run_dir)["status"] == "completed"
    assert (run_dir / "attempts" / "1" / "checkpoint.pt").exists()
    assert [r["epoch_lr"] for r in metrics(run_dir)] == [0.2, 0.2, 0.2]
    assert [r["epoch"] for r in metrics(run_dir)] == [1, 2, 3]


def test_a_write_that_fails_leaves_no_partial_copy_behind(tmp_path, monkeypatch):
    import errno

    from sweeper import runlog

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runlog.os, "replace", disk_full)
    with pytest.raises(OSError, match="No space"):
        runlog.atomic_write(tmp_path / "checkpoint.pt", b"x" * 1000)
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_the_file_system_cannot_read_now_is_not_set_aside(tmp_path, monkeypatch):
    # EIO or ESTALE on a network file system says nothing of the file: setting a sound record
    # aside would retrain the run from epoch 1. The start fails; a rerun resumes.
    import errno

    cfg = compose_cfg("trainer.epochs=3")
    run_dir = tmp_path / "run"
    interrupt_at_checkpoint(monkeypatch, cfg, run_dir, 3)

    def unreadable(self):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(RunLog, "load_checkpoint", unreadable)
    with pytest.raises(OSError, match="Input/output"):
        train.run(cfg, run_dir)
    monkeypatch.undo()
    assert not (run_dir / "attempts").exists()
    assert train.run(cfg, run_dir)["status"] == "completed"
    assert not (run_dir / "attempts").exists()  # resumed


def test_a_set_aside_stopped_midway_is_finished_into_the_same_attempt(tmp_path, monkeypatch):
    # Killed after config.json had moved, the rest went to attempts/2 at the next start: one
    # attempt split over two dirs.
    cfg = compose_cfg("trainer.epochs=3")
    run_dir = tmp_path / "run"
    train.run(cfg, run_dir)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.suffix != ".log"}
    real_move = rundir.shutil.move
    moves = []

    def move(src, dst):
        if len(moves) == 2:  # config.json and job.json have moved
            raise KeyboardInterrupt
        moves.append(src)
        return real_move(src, dst)

    monkeypatch.setattr(rundir.shutil, "move", move)
    with pytest.raises(KeyboardInterrupt):
        train.run(compose_cfg("trainer.epochs=3", "trainer.resume=false"), run_dir)
    monkeypatch.undo()
    assert (run_dir / "attempts" / "1" / rundir.UNFINISHED).exists()

    assert (
        train.run(compose_cfg("trainer.epochs=3", "trainer.resume=false"), run_dir)["status"] == "completed"
    )
    kept = run_dir / "attempts" / "1"
    assert [p.name for p in (run_dir / "attempts").iterdir()] == ["1"]
    assert not (kept / rundir.UNFINISHED).exists()
    assert {name: (kept / name).read_bytes() for name in before} == before  # the whole earlier attempt


def test_moving_into_an_attempt_never_overwrites(tmp_path):
    (tmp_path / "a").write_text("old")
    (tmp_path / "b").write_text("new")
    (tmp_path / "kept").mkdir()
    rundir.move_into(tmp_path / "a", tmp_path / "kept" / "train.log")
    rundir.move_into(tmp_path / "b", tmp_path / "kept" / "train.log")
    assert (tmp_path / "kept" / "train.log").read_text() == "old"
    assert (tmp_path / "kept" / "train.log.~2").read_text() == "new"


@pytest.mark.parametrize(
    "damage, why",
    [
        (b"[]\n", "summary.json is damaged: not a JSON object (list)"),
        (b"{broken", "summary.json is damaged: not JSON"),
        (b'{"status": "completed"}', "summary.json says None"),
        (b'{"status": 3}', "summary.json is damaged: status 3"),
    ],
    ids=["a-list", "not-json", "no-numbers", "a-number-status"],
)
def test_a_damaged_summary_is_set_aside_and_the_run_trained_again(tmp_path, caplog, damage, why):
    # `[]` in summary.json raised AttributeError at every rerun (no end summary either); a summary
    # that did not parse was taken as absent, and resuming overwrote it: damage lost, unnamed.
    cfg = compose_cfg("trainer.epochs=2")
    run_dir = tmp_path / "run"
    first = train.run(cfg, run_dir)
    (run_dir / "summary.json").write_bytes(damage)
    with caplog.at_level("INFO", logger="sweeper"):
        again = train.run(cfg, run_dir)
    assert why in caplog.text
    assert (run_dir / "attempts" / "1" / "summary.json").read_bytes() == damage  # kept, not lost
    assert again["status"] == "completed" and again["final_test_acc"] == first["final_test_acc"]


def test_an_ended_run_whose_metrics_do_not_support_its_summary_is_not_skipped(tmp_path, caplog):
    # A completed run's last metrics line cut in half: the rerun skipped it, and the record's
    # metrics said epoch 1 while its summary said epoch 2.
    cfg = compose_cfg("trainer.epochs=2")
    run_dir = tmp_path / "run"
    first = train.run(cfg, run_dir)
    data = (run_dir / "metrics.jsonl").read_bytes()
    (run_dir / "metrics.jsonl").write_bytes(data[: len(data) - 40])
    with caplog.at_level("INFO", logger="sweeper"):
        again = train.run(cfg, run_dir)
    assert "it ended completed, but metrics.jsonl line 2 is damaged" in caplog.text
    assert again["status"] == "completed" and again["final_test_acc"] == first["final_test_acc"]
    assert len(metrics(run_dir)) == 2


def test_a_recorded_config_that_is_not_an_object_is_damage_not_a_difference(tmp_path):
    # config_difference raised TypeError ('<' not supported) on [1, 2], and "not iterable" on 42,
    # from sweep.check_jobs: one damaged record blocked every job of the sweep.
    assert rundir.config_difference([1, 2], {"lr": 0.1}) == []
    assert rundir.config_difference(42, {"lr": 0.1}) == []
    assert rundir.config_difference({"lr": 0.2, "model": 5}, {"lr": 0.1, "model": {"a": 1}}) == [
        "lr: 0.2 -> 0.1",
        "model: 5 -> {'a': 1}",
    ]
    for damage in (b"[1, 2]", b"42", b"\xff"):
        (tmp_path / "config.json").write_bytes(damage)
        assert rundir.recorded_config(tmp_path) is None
        rundir.check_start(compose_cfg(), tmp_path)  # no refusal, no traceback: the start sets it aside


def test_trainer_threads_is_set_at_the_start_and_recorded(tmp_path, caplog):
    # CPU kernels reduce in an order that depends on the thread count: the pool's workers (cores /
    # workers threads) and the basic launcher (every core) gave different numbers for one config.
    import torch

    given = torch.get_num_threads()
    try:
        with caplog.at_level("INFO", logger="sweeper"):
            one = train.run(compose_cfg("++trainer.threads=1", "trainer.epochs=1"), tmp_path / "one")
        assert one["threads"] == one["torch_threads"] == 1
        assert "on cpu, 1 threads" in caplog.records[0].getMessage()  # the run's first line
        # `auto` is what the process was given, not what the run before it set
        auto = train.run(compose_cfg("trainer.epochs=1"), tmp_path / "auto")
        assert auto["threads"] == given
        with pytest.raises(ConfigError, match="trainer.threads=0 is invalid"):
            train.use_threads(compose_cfg("++trainer.threads=0"))
    finally:
        torch.set_num_threads(given)


def test_pending_hydra_dirs_of_ended_invocations_are_removed_at_the_next_start(tmp_path):
    # A kill before its run started left .hydra.pending-<pid>/ in the run dir for good.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = tmp_path / "run"
    stale = run_dir / f"{rundir.PENDING_HYDRA_FILES}{dead.pid}"
    alive = run_dir / f"{rundir.PENDING_HYDRA_FILES}{os.getppid()}"  # a live process's: kept
    for d in (stale, alive):
        d.mkdir(parents=True)
        (d / "config.yaml").write_text("lr: 0.1\n")
    assert train.run(compose_cfg("trainer.epochs=1"), run_dir)["status"] == "completed"
    assert not stale.exists() and alive.exists()


@pytest.mark.parametrize("job", [b"{garbage", b"[1, 2]", b'{"pid": "1", "host": 3}', b'{"pid": 99999999999}'])
def test_a_damaged_job_json_names_no_live_writer(tmp_path, job):
    from sweeper import processes

    # Garbage, or a pid that is no int or past any pid, read as some process's: a dead run shown
    # as being trained, a rerun refused; or an OverflowError from os.kill.
    (tmp_path / "job.json").write_bytes(job)
    assert rundir.live_writer(tmp_path) is None
    assert (processes.read_job(tmp_path) is None) == (not job.startswith(b'{"'))


def test_a_run_dir_that_cannot_be_written_is_refused_in_one_line_before_hydra_writes(tmp_path):
    # Hydra's own writes failed first, with a traceback ("Unable to configure handler 'file'").
    assert "is not writable" in rundir.unwritable("/sys/sweeper-test/run")
    assert rundir.unwritable(tmp_path / "new" / "run") is None
    assert not (tmp_path / "new").exists() and not list(tmp_path.iterdir())  # the probe is gone
    (tmp_path / "file").write_text("")
    assert "is not a directory" in rundir.unwritable(tmp_path / "file" / "run")
    done = run_cli(*TINY, "hydra.run.dir=/sys/sweeper-test/run", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "cannot hold the run's record: /sys is not writable" in done.stderr


def test_a_job_whose_record_cannot_be_read_or_written_fails_alone_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "1" / "config.json").mkdir(parents=True)  # IsADirectoryError for the job's record
    done = run_cli("-m", *TINY, "lr=0.1,0.2,0.3", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode in (0, 1) and "Traceback" not in out, out[-3000:]
    assert f"error: {sweep / '1'}: the run record cannot be written or read" in out
    for n in (0, 2):
        assert json.loads((sweep / str(n) / "summary.json").read_text())["status"] == "completed"


def test_sigterm_stops_a_sweep_with_its_summary_and_dies_by_the_signal(tmp_path):
    # The basic launcher printed nothing on SIGTERM: Ctrl-C's summary was for KeyboardInterrupt only.
    sweep = tmp_path / "sweep"
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    args = ["-m", *TINY, "trainer.epochs=30", "lr=0.1,0.2", f"hydra.sweep.dir={sweep}"]
    with subprocess.Popen(
        [sys.executable, "-m", "sweeper", *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        deadline = time.time() + 120
        while time.time() < deadline and not (sweep / "0" / "checkpoint.pt").exists():
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM  # a shell sees 143
    assert f"sweep {sweep}: 2 jobs:" in out and "interrupted" in out, out + err
    assert "Traceback" not in err, err[-3000:]
    assert not (sweep / "0" / "summary.json").exists()  # stopped, to resume: not failed

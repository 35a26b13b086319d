"""Grids through `python -m sweeper -m`, as a user types them: records, failure isolation, resume."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweeper.processes import process_started
from tests.conftest import CONF, TINY, run_cli
from tests.test_data import write_image_folder

FAST = [o for o in TINY if o.startswith("data")] + [
    "data.generated_train=200",
    "trainer.epochs=1",
    "model.units=[16]",
]
RECORD = {"config.json", "job.json", "metrics.jsonl", "losses.npz", "summary.json", "checkpoint.pt"}


def sweep(tmp_path: Path, *args: str, name="sweep"):
    return run_cli("-m", *args, f"hydra.sweep.dir={tmp_path / name}", cwd=tmp_path), tmp_path / name


def test_the_card_command_gives_nine_complete_runs(tmp_path):
    result, sweep_dir = sweep(tmp_path, *FAST, "model.channels=16,32,64", "lr=0.2,0.1,0.01")
    assert result.returncode == 0, result.stderr
    listing = json.loads((sweep_dir / "sweep.json").read_text())
    assert len(listing["jobs"]) == 9
    seen = set()
    for job in listing["jobs"]:
        run = sweep_dir / job["dir"]
        assert {p.name for p in run.iterdir()} >= RECORD
        summary = json.loads((run / "summary.json").read_text())
        config = json.loads((run / "config.json").read_text())
        assert summary["status"] == "completed"
        seen.add((config["model"]["channels"], config["lr"]))
        assert f"lr={config['lr']}" in job["overrides"]
    assert seen == {(c, lr) for c in (16, 32, 64) for lr in (0.2, 0.1, 0.01)}
    assert "9 jobs: 9 completed" in result.stdout


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    # A well-laid-out tree (the pre-check passes it) with one corrupt image, found only as it loads.
    broken = tmp_path / "broken"
    write_image_folder(broken)
    next((broken / "train" / "cat").glob("*.png")).write_bytes(b"garbage")
    write_image_folder(tmp_path / "good")
    # job 0 raises while decoding the corrupt folder; job 1 trains on the good one
    result, sweep_dir = sweep(
        tmp_path, "data=cifar10", "trainer.epochs=1", "model.channels=4", f"data.root={broken},{tmp_path / 'good'}",
        "data.download=false", f"data.cache_dir={tmp_path}/cache",
    )  # fmt: skip
    assert result.returncode == 1
    failed = json.loads((sweep_dir / "0" / "summary.json").read_text())
    assert failed["status"] == "failed" and "Traceback" in failed["traceback"]
    assert json.loads((sweep_dir / "1" / "summary.json").read_text())["status"] == "completed"
    assert "2 jobs: 1 completed, 1 failed" in result.stdout
    assert "UnidentifiedImageError" in result.stdout


def test_a_diverging_job_does_not_stop_the_sweep(tmp_path):
    result, sweep_dir = sweep(tmp_path, *FAST, "lr=1e20,0.1")
    assert result.returncode == 1
    states = [json.loads((sweep_dir / d / "summary.json").read_text())["status"] for d in ("0", "1")]
    assert states == ["diverged", "completed"]
    assert "2 jobs: 1 completed, 1 diverged" in result.stdout


@pytest.mark.slow  # several sweeps in turn
def test_rerunning_a_sweep_skips_completed_runs_and_refuses_another_grid(tmp_path):
    first, sweep_dir = sweep(tmp_path, *FAST, "lr=0.1,0.05")
    assert first.returncode == 0
    stamps = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/*") if p.name in RECORD}
    again, _ = sweep(tmp_path, *FAST, "lr=0.1,0.05")
    assert again.returncode == 0
    assert "already completed, skipping" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # the run records are untouched
    other, _ = sweep(tmp_path, *FAST, "lr=0.1,0.01")
    assert other.returncode == 2
    assert "holds a sweep of another grid" in other.stderr


@pytest.mark.slow  # over 8 s: CI's slow step runs it
def test_trainer_resume_false_reruns_the_same_grid_and_keeps_the_old_records(tmp_path):
    first, sweep_dir = sweep(tmp_path, *FAST, "lr=0.1,0.05")
    assert first.returncode == 0
    old = {n: (sweep_dir / str(n) / "metrics.jsonl").read_bytes() for n in (0, 1)}
    again, _ = sweep(tmp_path, *FAST, "lr=0.1,0.05", "trainer.resume=false")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "2 jobs: 2 completed" in again.stdout
    for n in (0, 1):
        # the earlier record is set aside, byte for byte, and the run trained again beside it
        assert (sweep_dir / str(n) / "attempts" / "1" / "metrics.jsonl").read_bytes() == old[n]
        assert json.loads((sweep_dir / str(n) / "summary.json").read_text())["status"] == "completed"
        # with the earlier attempt's Hydra files and log, which the new attempt did not overwrite
        assert (sweep_dir / str(n) / "attempts" / "1" / ".hydra" / "config.yaml").exists()
        assert (sweep_dir / str(n) / "attempts" / "1" / "train.log").exists()
        assert "trainer.resume" in (sweep_dir / str(n) / ".hydra" / "overrides.yaml").read_text()
        assert (
            "trainer.resume"
            not in (sweep_dir / str(n) / "attempts" / "1" / ".hydra" / "overrides.yaml").read_text()
        )


@pytest.mark.slow  # several sweeps in turn
def test_resuming_a_sweep_while_a_job_of_it_still_trains_here_is_refused(tmp_path):
    first, sweep_dir = sweep(tmp_path, *FAST, "lr=0.1,0.05")
    assert first.returncode == 0
    # run 1 looks unfinished and its job.json names a live process on this host (a sweep still
    # running in another shell): a second writer would interleave lines in its metrics.jsonl
    (sweep_dir / "1" / "summary.json").unlink()
    job_file = sweep_dir / "1" / "job.json"
    job = json.loads(job_file.read_text())
    with subprocess.Popen(["sleep", "60"]) as writer:
        try:
            job_file.write_text(
                json.dumps({**job, "pid": writer.pid, "pid_started": process_started(writer.pid)})
            )
            again, _ = sweep(tmp_path, *FAST, "lr=0.1,0.05")
        finally:
            writer.kill()
    assert again.returncode == 2
    assert f"is being trained by process {writer.pid} on this host" in again.stderr
    assert not (sweep_dir / "1" / "summary.json").exists()  # nothing was run
    # once that process is gone, the same command resumes the run
    resumed, _ = sweep(tmp_path, *FAST, "lr=0.1,0.05")
    assert resumed.returncode == 0 and "2 jobs: 2 completed" in resumed.stdout


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times come from /proc")
@pytest.mark.slow  # over 8 s: CI's slow step runs it
def test_a_pid_reused_by_another_process_after_a_crash_does_not_block_the_resume(tmp_path):
    first, sweep_dir = sweep(tmp_path, *FAST, "lr=0.1,0.05")
    assert first.returncode == 0
    (sweep_dir / "1" / "summary.json").unlink()  # run 1 crashed (a reboot, a kill -9)
    job_file = sweep_dir / "1" / "job.json"
    with subprocess.Popen(["sleep", "60"]) as stranger:
        try:
            # its pid now belongs to an unrelated process, which started at another time
            job = {**json.loads(job_file.read_text()), "pid": stranger.pid,
                   "pid_started": process_started(stranger.pid) - 1}  # fmt: skip
            job_file.write_text(json.dumps(job))
            resumed, _ = sweep(tmp_path, *FAST, "lr=0.1,0.05")
        finally:
            stranger.kill()
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "2 jobs: 2 completed" in resumed.stdout


@pytest.mark.slow  # over 8 s: CI's slow step runs it
def test_an_unreadable_or_foreign_job_json_does_not_stop_a_resume(tmp_path):
    first, sweep_dir = sweep(tmp_path, *FAST, "lr=0.1,0.05")
    assert first.returncode == 0
    for num, content in ((0, "[1]"), (1, '{"host": "another-node", "pid": 1}')):
        (sweep_dir / str(num) / "summary.json").unlink()
        (sweep_dir / str(num) / "job.json").write_text(content)
    resumed, _ = sweep(tmp_path, *FAST, "lr=0.1,0.05")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "2 jobs: 2 completed" in resumed.stdout


@pytest.mark.slow  # over 8 s: CI's slow step runs it
def test_a_damaged_sweep_json_is_refused_in_one_line_and_a_damaged_config_json_set_aside(tmp_path):
    first, sweep_dir = sweep(tmp_path, *FAST, "lr=0.1,0.05")
    assert first.returncode == 0
    listing = (sweep_dir / "sweep.json").read_text()
    (sweep_dir / "sweep.json").write_text(listing[:40])  # its grid says which run dir is whose
    refused, _ = sweep(tmp_path, *FAST, "lr=0.1,0.05")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"error: {sweep_dir / 'sweep.json'} is damaged: it is not JSON; move it away to resume this sweep "
        "(each run dir is then checked against its job's config), or choose another hydra.sweep.dir"
    ]
    (sweep_dir / "sweep.json").write_text(listing)
    (sweep_dir / "1" / "config.json").write_text('{"lr": ')  # a rerun gave a JSONDecodeError traceback
    resumed, _ = sweep(tmp_path, *FAST, "lr=0.1,0.05")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (sweep_dir / "1" / "attempts" / "1" / "config.json").read_text() == '{"lr": '
    assert json.loads((sweep_dir / "1" / "summary.json").read_text())["status"] == "completed"


@pytest.mark.parametrize(
    "name", sorted(f.stem for f in (CONF / "experiment").glob("lecture_*.yaml")) + ["demo"]
)
def test_every_experiment_runs_shrunk(tmp_path, name):
    # The experiments' own grids and protocol, on tiny synthetic data for one or two epochs.
    shrink = [
        "data=synthetic",
        "data.cache_dir=null",
        "data.generated_train=100",
        "data.generated_test=50",
        "trainer.epochs=2",
        "trainer.batch_size=50",
    ]
    if name == "lecture_lr2":
        shrink.append("schedule.switch_epoch=1")
    if name == "lecture_overfit_subset":
        shrink.append("data.train_size=60")
    result, sweep_dir = sweep(tmp_path, f"experiment={name}", *shrink)
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = json.loads((sweep_dir / "sweep.json").read_text())["jobs"]
    assert len(jobs) >= 1
    assert all(
        json.loads((sweep_dir / j["dir"] / "summary.json").read_text())["status"] == "completed" for j in jobs
    )


@pytest.mark.slow  # several sweeps in turn
def test_resuming_a_sweep_whose_runs_hold_another_config_is_refused_before_any_job(tmp_path):
    first, sweep_dir = sweep(tmp_path, *FAST, "lr=0.1,0.05")
    assert first.returncode == 0
    # the same grid, but run 1 was written with another protocol (an edited experiment file, an
    # older version's defaults): resuming into it would mix two configs in one sweep
    config_file = sweep_dir / "1" / "config.json"
    config = json.loads(config_file.read_text())
    config["trainer"]["epochs"] = 3
    config_file.write_text(json.dumps(config))
    stamps = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/*") if p.name in RECORD}
    again, _ = sweep(tmp_path, *FAST, "lr=0.1,0.05")
    assert again.returncode == 2
    assert "holds a run of another config (trainer.epochs: 3 -> 1)" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # job 0 was not rerun either
    assert json.loads((sweep_dir / "sweep.json").read_text())["launcher"] == "basic"


@pytest.mark.slow  # over 8 s: CI's slow step runs it
def test_a_custom_subdir_is_where_the_sweep_records_checks_and_counts_its_jobs(tmp_path):
    # Job dirs named by their overrides, not by number: sweep.json, the summary and the checks
    # before a resume must all use those dirs.
    subdir = "hydra.sweep.subdir=${hydra.job.override_dirname}"
    first, sweep_dir = sweep(tmp_path, subdir, *FAST, "lr=0.1,0.05")
    assert first.returncode == 0, first.stdout[-2000:]
    assert "2 jobs: 2 completed" in first.stdout
    jobs = json.loads((sweep_dir / "sweep.json").read_text())["jobs"]
    assert [[o for o in j["dir"].split(",") if o.startswith("lr=")] for j in jobs] == [
        ["lr=0.1"],
        ["lr=0.05"],
    ]
    for job in jobs:
        assert json.loads((sweep_dir / job["dir"] / "summary.json").read_text())["status"] == "completed"
        assert (sweep_dir / job["dir"] / ".hydra" / "config.yaml").exists()
    assert {p.name for p in sweep_dir.iterdir() if p.is_dir()} == {j["dir"] for j in jobs}
    run = sweep_dir / jobs[1]["dir"]
    (run / "summary.json").unlink()
    job = json.loads((run / "job.json").read_text())
    with subprocess.Popen(["sleep", "60"]) as writer:
        try:
            (run / "job.json").write_text(
                json.dumps({**job, "pid": writer.pid, "pid_started": process_started(writer.pid)})
            )
            again, _ = sweep(tmp_path, subdir, *FAST, "lr=0.1,0.05")
        finally:
            writer.kill()
    assert again.returncode == 2
    assert f"{run} is being trained by process {writer.pid}" in again.stderr
    # a subdir that names every job alike would have two writers share one record
    same, _ = sweep(tmp_path, "hydra.sweep.subdir=all", *FAST, "lr=0.1,0.05", name="same")
    assert same.returncode == 2
    assert f"jobs 0 and 1 would both write to {tmp_path / 'same' / 'all'}" in same.stderr


@pytest.mark.slow  # over 8 s: CI's slow step runs it
def test_the_same_grid_given_in_another_order_resumes_in_its_recorded_run_dirs(tmp_path):
    first, sweep_dir = sweep(tmp_path, "lr=0.1,0.05", *FAST, "trainer.seed=0,1")
    assert first.returncode == 0, first.stdout[-2000:]
    stamps = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/*") if p.name in RECORD}
    # the keys (and the values of a key) in another order: Hydra numbers the jobs otherwise
    again, _ = sweep(tmp_path, "trainer.seed=1,0", *FAST, "lr=0.1,0.05")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("already completed, skipping") == 4 and "4 jobs: 4 completed" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # Hydra's basic sweeper launches in the order given, which would put jobs in each other's dirs
    basic, _ = sweep(tmp_path, "hydra/sweeper=basic", "trainer.seed=1,0", *FAST, "lr=0.1,0.05")
    assert basic.returncode == 2 and "holds this grid with its jobs in another order" in basic.stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


@pytest.mark.slow  # over 8 s: CI's slow step runs it
def test_trainer_resume_false_starts_a_changed_grid_over_and_sets_the_old_sweep_aside(tmp_path):
    first, sweep_dir = sweep(tmp_path, *FAST, "lr=0.1,0.05")
    assert first.returncode == 0
    old = {str(p.relative_to(sweep_dir)): p.read_bytes() for p in sweep_dir.rglob("*") if p.is_file()}
    changed, _ = sweep(tmp_path, *FAST, "lr=0.1,0.05", "trainer.epochs=2")
    assert changed.returncode == 2 and "holds a sweep of another grid" in changed.stderr
    over, _ = sweep(tmp_path, *FAST, "lr=0.1,0.05", "trainer.epochs=2", "trainer.resume=false")
    assert over.returncode == 0, over.stderr[-2000:]
    assert "2 jobs: 2 completed" in over.stdout
    aside = sweep_dir / "attempts" / "1"
    # the whole earlier sweep, byte for byte: its job list, Hydra's file, every run of it
    assert {str(p.relative_to(aside)): p.read_bytes() for p in aside.rglob("*") if p.is_file()} == old
    listing = json.loads((sweep_dir / "sweep.json").read_text())
    assert "trainer.epochs=2" in listing["jobs"][0]["overrides"]
    for job in listing["jobs"]:
        rows = (sweep_dir / job["dir"] / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(r)["epoch"] for r in rows] == [1, 2]
        assert not (sweep_dir / job["dir"] / "attempts").exists()


def test_an_exited_process_not_yet_reaped_writes_nothing_and_is_not_alive():
    from sweeper import processes

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while processes._stat_fields(child.pid)[0] != "Z":  # exited; not waited for, so a zombie
        assert time.monotonic() < deadline
        time.sleep(0.05)
    job = {"pid": child.pid, "pid_started": processes.process_started(child.pid)}
    try:
        # Before, kill(pid, 0) succeeded on the zombie: a rerun was refused as "being trained".
        assert not processes.alive(job)
    finally:
        child.wait()


def test_the_end_summary_counts_complete_epoch_lines_only(tmp_path):
    from sweeper.sweep import job_state

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    lines = [json.dumps({"epoch": e}) for e in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"epoch": 4, "tra')  # killed mid-line
    assert job_state(run, ended=True) == (
        "interrupted",
        "stopped after 3 epochs; a rerun into this sweep dir resumes it",
    )


@pytest.mark.parametrize("content", ["[1,2]", "42"], ids=["a-list", "a-number"])
@pytest.mark.slow  # over 8 s: CI's slow step runs it
def test_a_config_json_of_another_shape_is_named_and_its_run_restarts_while_the_good_runs_run_on(
    tmp_path, content
):
    first, sweep_dir = sweep(tmp_path, *FAST, "lr=0.1,0.05")
    assert first.returncode == 0, first.stderr[-2000:]
    good = (sweep_dir / "0" / "metrics.jsonl").read_bytes()
    (sweep_dir / "1" / "config.json").write_text(content)  # a TypeError in config_difference, before
    again, _ = sweep(tmp_path, *FAST, "lr=0.1,0.05")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Traceback" not in again.stderr
    assert f"{sweep_dir / '1' / 'config.json'} is not a JSON object" in again.stderr
    assert "2 jobs: 2 completed" in again.stdout
    assert (sweep_dir / "0" / "metrics.jsonl").read_bytes() == good  # the good run: untouched
    assert json.loads((sweep_dir / "1" / "config.json").read_text())["lr"] == 0.05  # started over
    assert (sweep_dir / "1" / "attempts" / "1" / "config.json").read_text() == content  # kept aside


@pytest.mark.slow  # 24 s: a sweep rerun per shape
def test_a_sweep_json_of_the_wrong_shape_is_refused_in_one_line(tmp_path):
    first, sweep_dir = sweep(tmp_path, *FAST, "lr=0.1,0.05")
    assert first.returncode == 0, first.stderr[-2000:]
    listing = json.loads((sweep_dir / "sweep.json").read_text())
    path = sweep_dir / "sweep.json"
    cases = {  # before: a TypeError, a KeyError 'overrides'
        json.dumps({"jobs": [1, 2]}): "job 0 of its list is 1, not an object with num, dir and overrides",
        json.dumps({"jobs": [{}, {}]}): "job 0 of its list has num null, not 0",
        json.dumps(
            {**listing, "jobs": [listing["jobs"][0], {**listing["jobs"][1], "overrides": "lr=0.05"}]}
        ): ('job 1 of its list has overrides "lr=0.05", not a list of strings'),
        json.dumps({**listing, "jobs": [{**listing["jobs"][0], "dir": 7}, listing["jobs"][1]]}): (
            "job 0 of its list has dir 7, not a path"
        ),
        "[]": "it is not a JSON object (it holds list [])",
        json.dumps({"jobs": "0,1"}): "it has no job list",
    }
    for content, what in cases.items():
        path.write_text(content)
        refused, _ = sweep(tmp_path, *FAST, "lr=0.1,0.05")
        assert refused.returncode == 2, content
        assert refused.stderr.strip().splitlines() == [
            f"error: {path} is damaged: {what}; move it away to resume this sweep (each run dir is then "
            "checked against its job's config), or choose another hydra.sweep.dir"
        ], content


@pytest.mark.parametrize(
    "subdir, run_dir",
    [
        ("../../escape_${hydra.job.num}", "escape_0"),
        ("/tmp/elsewhere_${hydra.job.num}", "/tmp/elsewhere_0"),
        (".", "a/s"),
    ],
)
def test_a_subdir_outside_the_sweep_dir_is_refused_before_launch(tmp_path, subdir, run_dir):
    # Before, the runs were written outside the sweep dir and the summary said "2 completed",
    # while the analysis and `status` found none of them.
    sweep_dir = tmp_path / "a" / "s"
    result = run_cli(
        "-m",
        f"hydra.sweep.subdir={subdir}",
        *FAST,
        "lr=0.1,0.2",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: hydra.sweep.subdir={subdir} is invalid: job 0's run dir {tmp_path / run_dir} must be below the "
        f"sweep dir {sweep_dir}, where the analysis and a resume look for it; use a relative path, e.g. "
        "${hydra.job.num}"
    ]
    assert not list(tmp_path.rglob("config.json")) and not sweep_dir.exists()


@pytest.mark.parametrize("where", ["/sys/kernel", "/sys/kernel/sweeper-test"], ids=["existing", "new"])
def test_a_sweep_dir_that_cannot_be_written_is_named_in_one_line_before_launch(tmp_path, where):
    # /sys refuses every write, even root's: as a read-only file system does (a traceback about
    # multirun.yaml, before).
    if not Path("/sys/kernel").is_dir():
        pytest.skip("needs Linux's /sys")
    result = run_cli("-m", *FAST, "lr=0.1,0.2", f"hydra.sweep.dir={where}", cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: /sys/kernel is not writable (")  # where it, or its dirs, would be made
    assert line.endswith(
        "): the sweep writes its records there; make it writable, or choose another hydra.sweep.dir"
    )


def test_a_sweep_dir_on_a_full_disk_is_named_in_one_line_before_launch(tmp_path):
    # An empty file still fits on a full disk, so the check writes a block: Hydra's own writes
    # (multirun.yaml, a job's .hydra/) otherwise failed with a traceback.
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True
    ).returncode:
        pytest.skip("needs to mount a small tmpfs (root)")
    try:
        with (disk / "fill").open("wb", buffering=0) as f, __import__("contextlib").suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
        result = run_cli("-m", *FAST, "lr=0.1,0.2", f"hydra.sweep.dir={disk / 'sweep'}", cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-2000:]
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"error: {disk} is not writable (No space left on device)")
    finally:
        subprocess.run(["umount", str(disk)], check=False)


NOBODY = 65534


@pytest.mark.slow  # several sweeps in turn
def test_a_run_dir_that_cannot_be_written_is_named_in_one_line_before_launch():
    # Hydra opens a job's log file in its run dir before the job runs: a traceback, and the later
    # jobs never ran. Root writes anywhere, so the rerun runs as another user, for whom run dir 1
    # is read-only.
    import os
    import shutil
    import tempfile

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv, to run the sweep as another user")
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    probe = subprocess.run([*as_nobody, sys.executable, "-c", "import sweeper"], cwd=CONF.parent,
                           capture_output=True)  # fmt: skip
    if probe.returncode != 0:
        pytest.skip("another user cannot read this checkout or its python")
    base = Path(tempfile.mkdtemp(prefix="sweeper-ro-"))
    try:
        first, sweep_dir = sweep(base, *FAST, "lr=0.1,0.05")
        assert first.returncode == 0, first.stderr[-2000:]
        for path in [base, *base.rglob("*")]:
            os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
        (sweep_dir / "1").chmod(0o555)
        env = {**os.environ, "PYTHONPATH": str(CONF.parent), "HOME": str(base)}
        again = subprocess.run(
            [*as_nobody, sys.executable, "-m", "sweeper", "-m", *FAST, "lr=0.1,0.05",
             f"hydra.sweep.dir={sweep_dir}"],
            cwd=base, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert again.returncode == 2, again.stderr[-2000:]
        (line,) = again.stderr.strip().splitlines()
        assert line.startswith("error: job 1 (") and f"lr=0.05): {sweep_dir / '1'} is not writable:" in line
    finally:
        shutil.rmtree(base, ignore_errors=True)


def write_run(run: Path, summary=None, job=None) -> Path:
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    for name, content in (("summary.json", summary), ("job.json", job)):
        if content is not None:
            (run / name).write_text(content)
    return run


def test_a_run_trained_by_another_process_is_running_not_interrupted_at_the_end(tmp_path):
    # Two identical sweeps started together: this sweep's job was refused because the other
    # sweep trains it; its summary said "interrupted ... a rerun resumes it".
    from sweeper.sweep import job_state

    with subprocess.Popen(["sleep", "60"]) as other:
        try:
            job = {"host": __import__("socket").gethostname(), "pid": other.pid,
                   "pid_started": process_started(other.pid)}  # fmt: skip
            run = write_run(tmp_path / "run", job=json.dumps(job))
            state = job_state(run, ended=True)
        finally:
            other.kill()
    assert state == ("running", f"being trained by process {other.pid} on this host, in another sweep or run")


@pytest.mark.parametrize(
    "summary, job, detail",
    [
        ("[]", None, "summary.json is not a JSON object (it holds list [])"),
        (
            '{"status": "great"}',
            None,
            'summary.json has status "great", not one of completed, stopped_early, stopped, diverged, failed, paused',
        ),
        (
            '{"epochs_done": 3}',
            None,
            "summary.json has status null, not one of completed, stopped_early, stopped, diverged, failed, paused",
        ),
        ("{not json", None, "summary.json is not JSON"),
        (None, "garbage", "job.json is not JSON"),
        (None, "[1]", "job.json is not a JSON object (it holds list [1])"),
    ],
)
def test_a_damaged_summary_or_job_json_is_named_not_a_traceback_or_running(tmp_path, summary, job, detail):
    # Before: `[]` gave an AttributeError and no summary; a garbage job.json said "running".
    from sweeper import sweep as sweep_module

    run = write_run(tmp_path / "s" / "0", summary=summary, job=job)
    assert sweep_module.job_state(run) == ("damaged", detail)
    (tmp_path / "s" / "sweep.json").write_text(
        json.dumps({"jobs": [{"num": 0, "dir": "0", "overrides": ["lr=1"]}]})
    )
    assert sweep_module.report_end(tmp_path / "s") is False  # printed, no exception


def test_the_end_summary_says_1_job_and_1_epoch(tmp_path, capsys):
    from sweeper.sweep import report_end

    write_run(tmp_path / "s" / "0")
    (tmp_path / "s" / "0" / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
    (tmp_path / "s" / "sweep.json").write_text(
        json.dumps({"jobs": [{"num": 0, "dir": "0", "overrides": ["lr=1"]}]})
    )
    assert report_end(tmp_path / "s", ended=True) is False
    out = capsys.readouterr().out
    assert f"sweep {tmp_path / 's'}: 1 job: 0 completed, 1 interrupted" in out  # "1 jobs", before
    assert "stopped after 1 epoch; a rerun" in out


def test_tally_counts_states_in_the_given_order_with_unlisted_states_after():
    from sweeper.sweep import tally

    states = ["failed", "completed", "stalled", "completed"]
    assert tally(states) == "4 jobs: 2 completed, 1 failed, 1 stalled"  # stalled: not one of STATES
    assert tally(states, order=("failed", "completed")) == "4 jobs: 1 failed, 2 completed, 1 stalled"
    assert tally(["failed"], always=("completed",)) == "1 job: 0 completed, 1 failed"


def test_a_job_that_does_not_compose_is_refused_in_one_line_on_the_command_line(tmp_path):
    # The grid sweeper raises a Hydra exception (for any app); the project's command line says it
    # in one line and exits 2, as it refuses everything else, not Hydra's hint and exit 1.
    result = run_cli("-m", *FAST, "model=convnet,resnet", "model.growth=2.0", cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: job 1 (")
    assert line.endswith(" model=resnet model.growth=2.0): Could not override 'model.growth'.")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow  # several sweeps in turn
def test_a_subdir_naming_the_job_id_is_refused_where_the_id_is_known_only_after_submission(tmp_path):
    refused, sweep_dir = sweep(tmp_path, "hydra/launcher=submitit_local", "hydra.sweep.subdir=${hydra.job.id}",
                               *FAST, "lr=0.1,0.2")  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: hydra.sweep.subdir is invalid with this launcher: it uses ${hydra.job.id}, which is known only "
        "once the job is submitted; use ${hydra.job.num} or ${hydra.job.override_dirname}"
    ]
    # where the launcher's id is the job number, it names each job's dir by it
    ran, sweep_dir = sweep(tmp_path, "hydra.sweep.subdir=job${hydra.job.id}", *FAST, "lr=0.1,0.2", name="ok")
    assert ran.returncode == 0, ran.stderr
    assert [j["dir"] for j in json.loads((sweep_dir / "sweep.json").read_text())["jobs"]] == ["job0", "job1"]

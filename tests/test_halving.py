"""Successive halving (hydra/sweeper=halving) and what it stands on: a run paused at
trainer.until_epoch and resumed later equals one trained straight through."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from hydra_plugins.sweeper_halving.halving import promoted, rung_epochs, value_at
from sweeper import rundir, train
from sweeper.runlog import RunLog
from sweeper.validate import ConfigError, check
from tests.conftest import REPO, TINY, compose_cfg, run_cli


def rows_without_times(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in rows]


def test_a_run_paused_at_until_epoch_and_resumed_equals_one_trained_straight_through(tmp_path):
    base = ("trainer.epochs=4", "trainer.threads=1", "data.augment=true", "schedule=cosine")
    train.run(compose_cfg(*base), tmp_path / "straight")

    paused = tmp_path / "paused"
    first = train.run(compose_cfg(*base, "trainer.until_epoch=1"), paused)
    assert first["status"] == "paused" and first["epochs_done"] == 1 and first["epochs"] == 4
    assert first["status"] not in rundir.ENDED  # a rerun with a later until_epoch resumes it
    mtime = (paused / "checkpoint.pt").stat().st_mtime_ns
    again = train.run(compose_cfg(*base, "trainer.until_epoch=1"), paused)
    assert again == first and (paused / "checkpoint.pt").stat().st_mtime_ns == mtime  # skipped, not retrained
    assert train.run(compose_cfg(*base, "trainer.until_epoch=3"), paused)["epochs_done"] == 3
    last = train.run(compose_cfg(*base), paused)  # until_epoch null: to trainer.epochs

    assert last["status"] == "completed" and last["epochs_done"] == 4
    assert rows_without_times(paused) == rows_without_times(tmp_path / "straight")
    weights = [RunLog(tmp_path / d).load_checkpoint()["model"] for d in ("straight", "paused")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert (
        json.loads((paused / "job.json").read_text())["restarts"] == 2
    )  # two resumes; the skipped rerun started nothing


def test_until_epoch_past_trainer_epochs_is_refused_in_one_line():
    with pytest.raises(
        ConfigError, match=r"^trainer.until_epoch=5 is invalid: must be an integer >= 1 and <= 4$"
    ):
        check(compose_cfg("trainer.epochs=4", "trainer.until_epoch=5"))


# ---------------------------------------------------------------- the rungs' arithmetic and choice


def test_rungs_grow_by_eta_from_min_epochs_and_the_last_is_trainer_epochs():
    assert rung_epochs(1, 3, 9) == [1, 3, 9]
    assert rung_epochs(1, 3, 10) == [1, 3, 9, 10]
    assert rung_epochs(2, 2, 12) == [2, 4, 8, 12]
    assert rung_epochs(5, 3, 5) == [5]


def fake_run(run_dir, status, test_acc):
    """A run dir with a summary of `status` and 3 metrics lines, test_acc at epoch 3 as given."""
    run_dir.mkdir(parents=True)
    rows = [{"epoch": e, "test_acc": 0.1 if e < 3 else test_acc, "test_loss": 2.0} for e in (1, 2, 3)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "summary.json").write_text(json.dumps({"status": status, "epochs_done": 3}))
    return run_dir


def test_a_failed_or_diverged_configuration_is_never_promoted_and_ties_go_to_the_lower_job(tmp_path):
    runs = [
        fake_run(tmp_path / "0", "paused", 0.5),
        fake_run(tmp_path / "1", "failed", 0.9),  # its numbers are not a result
        fake_run(tmp_path / "2", "diverged", None),
        fake_run(tmp_path / "3", "paused", 0.7),
        fake_run(tmp_path / "4", "paused", 0.7),
        fake_run(tmp_path / "5", "stopped_early", 0.8),  # ended: it would not train on
    ]
    values = [value_at(run, 3, "test_acc") for run in runs]
    assert values == [0.5, None, None, 0.7, 0.7, None]
    assert promoted(list(range(6)), values, 1, "max") == [3]
    assert promoted(list(range(6)), values, 2, "max") == [3, 4]
    assert promoted(list(range(6)), values, 2, "min") == [0, 3]
    assert promoted(list(range(6)), values, 5, "max") == [0, 3, 4]  # fewer in the race than kept
    assert value_at(runs[0], 4, "test_acc") is None  # no line at that epoch


# ---------------------------------------------------------------- hydra/sweeper=halving, end to end

# 9 configurations, trainer.epochs=9, eta=3, min_epochs=1: rungs at epochs 1, 3, 9 of 9, 3, 1 jobs.
# One thread per run, whatever the launcher: the values are then bit-identical between launchers.
SWEEP = [
    "hydra/sweeper=halving",
    *(a for a in TINY if not a.startswith("trainer.epochs")),
    "trainer.epochs=9",
    "trainer.threads=1",
    "lr=0.3,0.1,0.03",
    "model.units=[8],[16],[32]",
]


def halving_sweep(tmp_path, name, *extra, timeout=300):
    sweep_dir = tmp_path / name
    result = run_cli("-m", *SWEEP, *extra, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, timeout=timeout)
    return sweep_dir, result


def halving_record(sweep_dir):
    return json.loads((sweep_dir / "sweep.json").read_text())["halving"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One halving sweep on Hydra's basic launcher, never interrupted: the reference."""
    tmp_path = tmp_path_factory.mktemp("straight")
    sweep_dir, result = halving_sweep(tmp_path, "sweep")
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir, result


def test_a_halving_sweep_trains_rungs_of_9_3_1_configurations_and_stops_the_others(straight):
    sweep_dir, result = straight
    record = halving_record(sweep_dir)
    assert [(r["epoch"], len(r["jobs"])) for r in record["rungs"]] == [(1, 9), (3, 3), (9, 1)]
    assert {k: record[k] for k in ("eta", "min_epochs", "metric", "mode", "epochs")} == {
        "eta": 3, "min_epochs": 1, "metric": "test_acc", "mode": "max", "epochs": 9
    }  # fmt: skip
    jobs = json.loads((sweep_dir / "sweep.json").read_text())["jobs"]
    for rung, entry in enumerate(record["rungs"]):
        # each value is the run's metrics line at the rung's epoch, in its own run dir
        for num, value in zip(entry["jobs"], entry["values"], strict=True):
            row = rows_without_times(sweep_dir / jobs[num]["dir"])[entry["epoch"] - 1]
            assert row["epoch"] == entry["epoch"] and row["test_acc"] == value
        # the best third goes on, ties to the lower job number
        best = sorted(zip(entry["values"], entry["jobs"], strict=True), key=lambda vn: (-vn[0], vn[1]))
        expected = [] if rung == 2 else sorted(n for _, n in best[: len(entry["jobs"]) // 3])
        assert entry["promoted"] == expected
        if rung < 2:
            assert record["rungs"][rung + 1]["jobs"] == entry["promoted"]
    picked = record["rungs"][-1]["picked"]
    assert picked == record["rungs"][-1]["jobs"][0]
    for num in range(9):
        summary = json.loads((sweep_dir / str(num) / "summary.json").read_text())
        if num == picked:
            assert summary["status"] == "completed" and summary["epochs_done"] == 9
            continue
        rung = 0 if num not in record["rungs"][1]["jobs"] else 1
        assert (summary["status"], summary["rung"], summary["epochs_done"]) == ("stopped", rung, (1, 3)[rung])
        assert len(rows_without_times(sweep_dir / str(num))) == (1, 3)[rung]  # trained no further
    # each configuration keeps its number across rungs, whatever its place in a rung's launch
    assert [json.loads((sweep_dir / str(n) / "job.json").read_text())["job_num"] for n in range(9)] == list(
        range(9)
    )
    assert "9 jobs: 1 completed, 8 stopped" in result.stdout
    assert f"halving: picked job {picked} " in result.stderr and "13 epochs trained" not in result.stderr
    assert "21 epochs trained, 26% of the full grid's 81" in result.stderr


@pytest.mark.slow
def test_the_pool_launcher_runs_the_same_rungs_to_the_same_values(tmp_path, straight):
    sweep_dir, result = halving_sweep(
        tmp_path,
        "pool",
        "hydra/launcher=pool",
        "hydra.launcher.devices=cpu",
        "hydra.launcher.slots_per_device=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert halving_record(sweep_dir) == halving_record(straight[0])
    assert [json.loads((sweep_dir / str(n) / "job.json").read_text())["job_num"] for n in range(9)] == list(
        range(9)
    )


def mid_rung_1(sweep_dir) -> bool:
    """Rung 1 launched, and its first run past epoch 1."""
    try:
        rungs = halving_record(sweep_dir)["rungs"]
        return len(rungs) == 2 and len(rows_without_times(sweep_dir / str(rungs[1]["jobs"][0]))) >= 2
    except (OSError, KeyError, ValueError):  # not written yet, or being replaced
        return False


@pytest.mark.slow
def test_fused_trials_pause_at_each_rung_and_the_promoted_one_trains_on(tmp_path):
    """hydra.launcher.fuse=true: a rung's configurations that differ only in lr train as one
    program, which pauses at the rung's epoch as a solo run does."""
    sweep_dir = tmp_path / "fused"
    args = [a for a in SWEEP if not a.startswith("model.units")]  # 3 configurations: lr only
    result = run_cli(
        "-m", *args, "hydra/launcher=pool", "hydra.launcher.devices=cpu", "hydra.launcher.fuse=true",
        f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = halving_record(sweep_dir)
    assert [(r["epoch"], len(r["jobs"])) for r in record["rungs"]] == [(1, 3), (3, 1), (9, 1)]
    picked = record["rungs"][-1]["picked"]
    for num in range(3):
        summary = json.loads((sweep_dir / str(num) / "summary.json").read_text())
        epochs = [r["epoch"] for r in rows_without_times(sweep_dir / str(num))]
        assert epochs == list(range(1, 10 if num == picked else 2)), (num, summary["status"])
        assert summary["status"] == ("completed" if num == picked else "stopped")
        if num != picked:  # rung 0 trained the three as one program
            assert summary["fused_trials"] == 3


@pytest.mark.slow
def test_trainer_resume_false_starts_the_halving_over_and_its_later_rungs_still_resume(tmp_path, straight):
    sweep_dir = tmp_path / "again"
    shutil.copytree(straight[0], sweep_dir)

    result = run_cli("-m", *SWEEP, "trainer.resume=false", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)

    assert result.returncode == 0, result.stderr[-3000:]
    assert "already done" not in result.stderr
    assert halving_record(sweep_dir) == halving_record(straight[0])  # trained again, to the same values
    picked = halving_record(sweep_dir)["rungs"][-1]["picked"]
    assert (sweep_dir / str(picked) / "attempts" / "1" / "summary.json").exists()  # the old one, set aside
    assert not (sweep_dir / str(picked) / "attempts" / "2").exists()  # and only that: rungs 1, 2 resumed
    assert rows_without_times(sweep_dir / str(picked)) == rows_without_times(straight[0] / str(picked))


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_sweep_killed_mid_rung_resumes_at_that_rung_with_the_same_pick(tmp_path, straight, how):
    sweep_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeper", "-m", *SWEEP, f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    deadline = time.monotonic() + 240
    while not mid_rung_1(sweep_dir):
        assert proc.poll() is None and time.monotonic() < deadline, "the sweep ended before rung 1"
        time.sleep(0.02)
    proc.send_signal(how)
    proc.wait(timeout=60)
    assert "values" not in halving_record(sweep_dir)["rungs"][1]  # stopped mid-rung
    rung_0 = [n for n in range(9) if n not in halving_record(sweep_dir)["rungs"][1]["jobs"]]
    stamps = {p: p.stat().st_mtime_ns for n in rung_0 for p in (sweep_dir / str(n)).iterdir() if p.is_file()}

    again = run_cli("-m", *SWEEP, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)

    assert again.returncode == 0, again.stderr[-3000:]
    assert "halving: rung 0 (epoch 1) already done, read from sweep.json" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # rung 0 untouched, not retrained
    assert halving_record(sweep_dir) == halving_record(straight[0])  # the same values, the same pick
    first = halving_record(sweep_dir)["rungs"][1]["jobs"][0]
    assert json.loads((sweep_dir / str(first) / "job.json").read_text())["restarts"] >= 2  # resumed
    assert (
        rows_without_times(sweep_dir / str(first))
        == rows_without_times(straight[0] / str(first))[: len(rows_without_times(sweep_dir / str(first)))]
    )


@pytest.mark.parametrize(
    "override, said",
    [
        ("hydra.sweeper.eta=1", "hydra.sweeper.eta=1 is invalid: must be an integer >= 2"),
        ("hydra.sweeper.min_epochs=0", "hydra.sweeper.min_epochs=0 is invalid: must be an integer >= 1"),
        (
            "hydra.sweeper.min_epochs=10",
            "hydra.sweeper.min_epochs=10 is invalid: must be <= trainer.epochs=9",
        ),
        ("hydra.sweeper.mode=up", "hydra.sweeper.mode=up is invalid: allowed values are max, min"),
        (
            "hydra.sweeper.metric=val_acc",
            "hydra.sweeper.metric=val_acc is invalid: allowed values are train_loss, train_acc, test_loss, test_acc",
        ),
        ("trainer.until_epoch=2", "trainer.until_epoch=2 is set by hydra/sweeper=halving at each rung"),
        (  # an added key the sweeper's class does not take: Hydra would say it in a TypeError over lines
            "+hydra.sweeper.max_batch_size=2",
            "hydra.sweeper.max_batch_size is not an argument of hydra_plugins.sweeper_halving.halving."
            "HalvingSweeper: it takes eta, min_epochs, metric, mode, params",
        ),
    ],
)
def test_a_bad_halving_setting_is_refused_in_one_line_before_anything_is_written(tmp_path, override, said):
    sweep_dir, result = halving_sweep(tmp_path, "refused", override)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith("error: ") and said in result.stderr and result.stderr.count("\n") == 1
    assert not sweep_dir.exists()


def test_the_report_draws_the_rungs_and_ranks_configurations_by_the_rung_they_reached(tmp_path, straight):
    from analysis import load_sweep, rungs, write_report

    sweep = load_sweep(straight[0])
    assert not sweep.problems  # stopped is a status of its own, not an unknown one
    assert "trainer.until_epoch" not in sweep.varied  # where a run paused is not a knob
    report = write_report(sweep, tmp_path / "report").read_text()

    assert (tmp_path / "report" / "rungs.png").stat().st_size > 0 and "![rungs](rungs.png)" in report
    assert "## Successive halving" in report
    record = halving_record(straight[0])
    table = rungs.ranking(rungs.found(sweep.runs))
    assert table["job"].iloc[0] == record["rungs"][-1]["picked"] and table["outcome"].iloc[0] == "picked"
    assert table["rung"].tolist() == [2] + [1] * 2 + [0] * 6  # further rungs rank first
    assert table.loc[table["rung"] == 0, "test_acc"].is_monotonic_decreasing


# ---------------------------------------------------------------- on the real SLURM test cluster


@pytest.mark.slurm
def test_on_slurm_each_rung_is_one_job_array_and_a_sweep_killed_mid_rung_resumes_there(tmp_path):
    from tests.slurm_helpers import find_cluster, read_json, slurm, sweep_cmd, wait_until

    cluster, reason = find_cluster()
    if cluster is None:
        if os.environ.get("SWEEPER_REQUIRE_SLURM") == "1":
            pytest.fail(f"SWEEPER_REQUIRE_SLURM=1 but no test cluster: {reason}")
        pytest.skip(reason)
    slower = "data.generated_train=1500"  # epochs long enough to be caught mid-rung at squeue's pace
    reference, local = halving_sweep(tmp_path, "local", slower)  # the same machine: the same values
    assert local.returncode == 0, local.stderr[-3000:]
    sweep_dir, log = tmp_path / "slurm", tmp_path / "sweep.log"
    args = ["hydra/launcher=submitit_slurm", *SWEEP, slower, f"hydra.sweep.dir={sweep_dir}"]
    env = {**cluster, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sweeper", "-m", *args], cwd=tmp_path, env=env, stdout=out, stderr=out
        )
    try:
        wait_until(lambda: mid_rung_1(sweep_dir), 300, "rung 1 under way", proc, log)
    finally:
        proc.kill()  # SIGKILL: the command is gone, its array runs on
        proc.wait()
    rung_1 = halving_record(sweep_dir)["rungs"][1]["jobs"]
    array = read_json(sweep_dir / str(rung_1[0]) / "job.json")["slurm_array_job_id"]
    slurm(cluster, "scancel", array)  # as a user would before rerunning: its runs keep their checkpoints
    wait_until(lambda: array not in slurm(cluster, "squeue", "-h", "-o", "%A").split(), 120, "the array gone")

    again = sweep_cmd(cluster, tmp_path, *args, timeout=600)

    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "halving: rung 0 (epoch 1) already done, read from sweep.json" in again.stderr
    assert "9 jobs: 1 completed, 8 stopped" in again.stdout
    assert halving_record(sweep_dir) == halving_record(reference)  # the same values, the same pick
    # each rung went out as one submission: an array of 9, an array of 3 (as relaunched), a job
    ids = read_json(sweep_dir / "slurm_jobs.json")["jobs"]  # launch number -> SLURM id
    assert sorted(ids, key=int) == [str(n) for n in range(13)]
    assert len({ids[str(n)].split("_")[0] for n in range(9)}) == 1
    assert len({ids[str(n)].split("_")[0] for n in range(9, 12)}) == 1
    assert len({ids[str(n)].split("_")[0] for n in (0, 9, 12)}) == 3


def test_a_configuration_of_the_last_rung_that_is_not_picked_finished_and_was_not_stopped(tmp_path):
    from analysis import rungs

    record = {"metric": "test_acc", "mode": "max", "rungs": [
        {"epoch": 1, "jobs": [0, 1, 2], "values": [0.1, 0.3, 0.2], "promoted": [1, 2]},
        {"epoch": 4, "jobs": [1, 2], "values": [0.5, 0.4], "picked": 1},
    ]}  # fmt: skip
    table = rungs.ranking(rungs.Halving(tmp_path, record, {0: "a", 1: "b", 2: "c"}))
    assert list(zip(table["job"], table["outcome"], strict=True)) == [
        (1, "picked"),
        (2, "finished, not picked"),
        (0, "stopped at rung 0"),
    ]

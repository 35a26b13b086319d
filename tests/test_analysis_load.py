"""analysis.load: run records (docs/run-record.md) -> tidy runs / curves / distributions."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import analysis.discovery
import analysis.knobs
import analysis.load
from analysis.discovery import NoRunsFound, newest_sweep
from analysis.knobs import flatten_config, typed_column
from analysis.load import load_sweep, select_rows
from sweeper.processes import process_started
from tests.fake_runs import (
    base_config,
    job_record,
    losses_arrays,
    make_sweep,
    metric_rows,
    summary_record,
    write_run,
    write_sweep_json,
)

TRAIN = [2.0, 1.0, 0.5]
TEST = [2.1, 1.2, 1.3]
TRAIN_ACC = [0.3, 0.6, 0.8]
TEST_ACC = [0.28, 0.55, 0.58]


def rows(**kw) -> list[dict]:
    return metric_rows(TRAIN, TEST, TRAIN_ACC, TEST_ACC, **kw)


def completed_run(run_dir, config=None, job_num=0, overrides=()):
    config = config or base_config()
    data = rows(lr=config["lr"])
    return write_run(run_dir, config, data, summary_record(data), job_record(overrides, job_num))


def grid_sweep(sweep_dir, points: list[dict]):
    """A sweep dir with one completed job per point of dotted overrides."""
    jobs = [[f"{k}={v}" for k, v in point.items()] for point in points]
    write_sweep_json(sweep_dir, jobs)
    for num, point in enumerate(points):
        completed_run(sweep_dir / str(num), base_config(**point), num, jobs[num])
    return sweep_dir


# --------------------------------------------------------------------------- flattening and dtypes


def test_flatten_uses_cli_override_names_drops_hydra_flags_and_keeps_lists_usable():
    flat = flatten_config(base_config())
    assert flat["lr"] == 0.1
    assert flat["model.channels"] == 32
    assert flat["optim.momentum"] == 0.0
    assert flat["model.units"] == (200,)  # hashable and comparable, unlike a list
    assert flat["model.pool"] == (3, 2)
    assert flat["schedule.name"] == "constant" and "schedule.lr2" not in flat
    assert not any(k.endswith("_partial_") for k in flat)
    assert flat["optim._target_"] == "torch.optim.SGD"  # the class is a knob (optim._target_=...)
    assert "model" not in flat and "optim" not in flat


def test_runs_columns_carry_the_real_dtype_of_each_knob(tmp_path):
    sweep = grid_sweep(
        tmp_path / "s",
        [
            {"lr": 0.1, "model.channels": 16, "model.units": [200], "data.augment": True},
            {
                "lr": 1,
                "model.channels": 32,
                "model.units": [200, 100],
                "data.augment": False,
            },  # lr=1: an int in JSON
        ],
    )
    runs = load_sweep(sweep).runs
    assert runs["lr"].dtype == "float64" and runs["lr"].tolist() == [0.1, 1.0]
    assert runs["model.channels"].dtype == "int64"
    assert runs["data.augment"].dtype == bool
    assert pd.api.types.is_string_dtype(runs["model.name"])
    assert runs["model.units"].tolist() == [(200,), (200, 100)]
    assert runs["trainer.sample_loss_epochs"].iloc[0] == (1, 2, 3, 5, 10)
    assert runs["epochs_done"].dtype == "int64"
    assert runs["min_test_loss_epoch"].dtype == "Int64"


def test_typed_column_keeps_ints_when_some_runs_lack_the_key():
    assert typed_column([1, None, 3]).dtype == "Int64"
    assert typed_column([0.1, None]).dtype == "float64"
    assert typed_column([True, None]).dtype == "boolean"
    assert typed_column([1, "a"]).dtype == object  # mixed: left alone, not coerced


def test_varied_keys_are_the_knobs_that_differ_lists_and_nulls_included(tmp_path):
    sweep = grid_sweep(
        tmp_path / "s",
        [
            {"lr": 0.1, "model.units": [200], "trainer.seed": 0},
            {"lr": 0.1, "model.units": [200, 100], "trainer.seed": 1},
            {"lr": 0.2, "model.units": [200], "trainer.seed": 0,
             "schedule.name": "step", "schedule.epoch": 25, "schedule.lr2": 0.01},
        ],
    )  # fmt: skip
    loaded = load_sweep(sweep)
    # schedule.lr2 is absent from the constant schedule's runs and 0.01 in the step one's: varied
    # (and placed with its group), not filled in as if those records were older.
    keys = ["lr", "model.units", "schedule.name", "schedule.switch_epoch", "schedule.lr2"]
    assert loaded.varied == [*keys, "trainer.seed"]
    assert loaded.group_keys == keys
    assert loaded.runs["schedule.lr2"].isna().tolist() == [True, True, False]
    assert "model.channels" in loaded.config_keys and "model.channels" not in loaded.varied


def test_curves_are_run_by_epoch_with_varied_keys_and_epoch_lr(tmp_path):
    sweep = grid_sweep(tmp_path / "s", [{"lr": 0.1}, {"lr": 0.05}])
    curves = load_sweep(sweep).curves
    assert len(curves) == 6
    assert curves.columns[:3].tolist() == ["run", "lr", "epoch"]
    # metrics.jsonl's per-epoch `lr` must not shadow the config knob `lr`
    assert curves["epoch_lr"].tolist() == [0.1] * 3 + [0.05] * 3
    assert curves["lr"].tolist() == [0.1] * 3 + [0.05] * 3
    assert curves.loc[curves["run"] == "1", "test_acc"].tolist() == TEST_ACC
    assert curves["gen_gap_loss"].iloc[2] == pytest.approx(TEST[2] - TRAIN[2])


def test_runs_have_reduced_metrics_status_and_run_dir(tmp_path):
    run = completed_run(tmp_path / "outputs/runs/2026-11-26/23-59-00")
    loaded = load_sweep(run)
    row = loaded.runs.iloc[0]
    assert row["run"] == "23-59-00"
    assert row["status"] == "completed"
    assert row["final_test_acc"] == 0.58 and row["best_test_acc"] == 0.58
    assert row["min_test_loss"] == 1.2 and row["min_test_loss_epoch"] == 2
    assert row["run_dir"] == str(run.resolve())
    assert loaded.varied == [] and loaded.problems == []
    # One name per knob: the planned epoch count is trainer.epochs, not also summary.json's "epochs".
    assert "trainer.epochs" in loaded.runs and "epochs" not in loaded.runs


# --------------------------------------------------------------------------- inputs


def test_accepts_a_run_dir_a_sweep_dir_several_sweeps_and_a_folder_of_sweeps(tmp_path):
    multirun = tmp_path / "outputs/multirun/2026-11-26"
    a = grid_sweep(multirun / "23-59-00", [{"lr": 0.1}, {"lr": 0.2}])
    b = grid_sweep(multirun / "23-59-30", [{"lr": 0.3}])
    assert load_sweep(a).runs["run"].tolist() == ["0", "1"]
    assert load_sweep(a / "1").runs["lr"].tolist() == [0.2]
    both = load_sweep([a, b]).runs
    assert both["run"].tolist() == ["23-59-00/0", "23-59-00/1", "23-59-30/0"]
    assert load_sweep(tmp_path / "outputs/multirun").runs["lr"].tolist() == [0.1, 0.2, 0.3]


def test_job_dirs_sort_numerically(tmp_path):
    sweep = grid_sweep(tmp_path / "s", [{"lr": 0.01 * i} for i in range(12)])
    assert load_sweep(sweep).runs["run"].tolist() == [str(i) for i in range(12)]


def test_no_runs_and_no_dir_are_errors_not_empty_frames(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_sweep(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoRunsFound):
        load_sweep(tmp_path / "empty")


# --------------------------------------------------------------------------- real-world mess


def messy_sweep(root):
    """Jobs: 0 ok, 1 crashed mid-line, 2 running, 3 failed, 4 diverged, 5 listed but never started,
    6 started but no record yet, 7 config.json lost, 8 corrupt summary.json, 9 garbage middle line."""
    sweep = root / "sweep"
    write_sweep_json(sweep, [[f"lr={0.1 + i / 100:g}"] for i in range(10)])
    config = base_config

    completed_run(sweep / "0", config(lr=0.1), 0)
    data = rows()
    write_run(
        sweep / "1",
        config(lr=0.11),
        data[:2],
        summary_record(data[:2], "failed", error="killed"),
        job_record(job_num=1),
        partial_line='{"epoch": 3, "step": 300, "lr": 0.1, "train_lo',
    )
    write_run(sweep / "2", config(lr=0.12), data[:2], None, job_record(job_num=2))
    write_run(
        sweep / "3",
        config(lr=0.13),
        [],
        summary_record([], "failed", error="ValueError: bad shape"),
        job_record(job_num=3),
    )
    diverged = rows()
    diverged[-1].update(
        train_loss=float("nan"), test_loss=float("nan"), train_acc=float("nan"), test_acc=float("nan")
    )
    write_run(
        sweep / "4", config(lr=0.14), diverged, summary_record(diverged, "diverged"), job_record(job_num=4)
    )
    (sweep / "6" / ".hydra").mkdir(parents=True)
    write_run(sweep / "7", None, data, summary_record(data), job_record(job_num=7))
    completed_run(sweep / "8", config(lr=0.18), 8)
    (sweep / "8" / "summary.json").write_text('{"status": "compl')
    completed_run(sweep / "9", config(lr=0.19), 9)
    lines = (sweep / "9" / "metrics.jsonl").read_text().splitlines()
    (sweep / "9" / "metrics.jsonl").write_text("\n".join([lines[0], "#garbage", *lines[1:]]) + "\n")
    return sweep


def test_a_messy_sweep_loads_its_good_runs_and_lists_the_bad_ones_with_reasons(tmp_path):
    loaded = load_sweep(messy_sweep(tmp_path))
    runs = loaded.runs.set_index("run")
    status = runs["status"].to_dict()
    assert status == {
        "0": "completed",
        "1": "failed",
        "2": "running",
        "3": "failed",
        "4": "diverged",
        "8": "damaged",  # a summary.json cut short ends nothing, nor leaves it running
        "9": "damaged",  # a complete line that is not JSON: damage from outside, not a crash
    }  # 7 has no config: it cannot be placed
    assert runs.loc["1", "epochs_done"] == 2  # the truncated third line is dropped
    assert runs.loc["2", "epochs_done"] == 2 and runs.loc["2", "final_test_acc"] == TEST_ACC[1]
    assert runs.loc["3", "epochs_done"] == 0 and np.isnan(runs.loc["3", "final_test_acc"])
    assert np.isnan(runs.loc["4", "final_test_acc"]) and runs.loc["4", "best_test_acc"] == TEST_ACC[1]
    assert runs.loc["9", "epochs_done"] == 3 and runs.loc["0", "final_test_acc"] == TEST_ACC[2]

    reasons = {}
    for run_dir, reason in loaded.problems:
        reasons.setdefault(os.path.basename(run_dir), []).append(reason)
    assert reasons["1"] == ["metrics.jsonl: truncated last line dropped", "failed: killed"]
    assert reasons["3"] == ["failed: ValueError: bad shape"]
    assert reasons["4"] == ["diverged at epoch 3"]
    assert reasons["5"] == ["missing: listed in sweep.json (lr=0.15) but no run record"]
    assert reasons["6"] == ["missing: listed in sweep.json (lr=0.16) but no run record"]
    assert reasons["7"] == ["config.json missing"]
    assert reasons["8"][0].startswith("damaged: summary.json: not valid JSON")
    assert reasons["9"] == ["damaged: metrics.jsonl: line 2: not valid JSON, dropped"]
    assert "0" not in reasons and "2" not in reasons  # a running run is not a problem


def test_a_running_run_reading_a_half_written_line_is_not_a_problem(tmp_path):
    data = rows()
    write_run(tmp_path / "r", base_config(), data[:2], None, job_record(), partial_line='{"epoch": 3, "st')
    loaded = load_sweep(tmp_path / "r")
    assert loaded.runs["status"].tolist() == ["running"]
    assert loaded.runs["epochs_done"].tolist() == [2]
    assert loaded.problems == []


def test_a_run_without_summary_is_interrupted_when_its_process_ended_and_stalled_when_silent(tmp_path):
    data = rows()
    old = write_run(tmp_path / "old", base_config(), data, None, job_record())
    two_days_ago = time.time() - 2 * 86400
    for name in ("config.json", "job.json", "metrics.jsonl"):
        os.utime(old / name, (two_days_ago, two_days_ago))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer exists, on this host
    write_run(
        tmp_path / "dead", base_config(), data, None, job_record(host=socket.gethostname(), pid=dead.pid)
    )
    # A live trainer on this host: another process (the reader's own pid would be its own job,
    # returned, as sweeper.sweep.job_state reads it).
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    me = {"host": socket.gethostname(), "pid": live.pid}
    try:
        alive = write_run(
            tmp_path / "alive",
            base_config(),
            data,
            None,
            job_record(**me, pid_started=process_started(live.pid)),
        )
        # the pid now belongs to another process: started at another time than recorded
        reused = write_run(
            tmp_path / "reused",
            base_config(),
            data,
            None,
            job_record(**me, pid_started=process_started(live.pid) - 1),
        )
        statuses = (
            load_sweep([old, tmp_path / "dead", alive, reused]).runs.set_index("run")["status"].to_dict()
        )
    finally:
        live.kill()
        live.wait()
    # the sweep's end summary says interrupted too; "old" ran on another host, silent for 2 days
    assert statuses == {"old": "stalled", "dead": "interrupted", "alive": "running", "reused": "interrupted"}


def test_an_epoch_logged_twice_after_a_restart_keeps_the_later_line(tmp_path):
    data = rows()
    redo = dict(data[1], test_acc=0.99)
    write_run(tmp_path / "r", base_config(), [*data[:2], redo, data[2]], summary_record(data), job_record())
    curves = load_sweep(tmp_path / "r").curves
    assert curves["epoch"].tolist() == [1, 2, 3]
    assert curves["test_acc"].tolist() == [TEST_ACC[0], 0.99, TEST_ACC[2]]


def test_a_missing_metrics_file_of_a_finished_run_is_damage_its_summary_shown_not_ranked(tmp_path):
    data = rows()
    run = write_run(tmp_path / "r", base_config(), data, summary_record(data), job_record())
    (run / "metrics.jsonl").unlink()
    loaded = load_sweep(run)
    assert loaded.runs["final_test_acc"].tolist() == [TEST_ACC[2]]  # what the summary says
    assert loaded.runs["min_test_loss_epoch"].tolist() == [2]
    assert loaded.runs["status"].tolist() == ["damaged"]  # its curve is gone: nothing checks the numbers
    assert loaded.curves.empty
    assert loaded.problems == [
        (str(run.resolve()), "damaged: metrics.jsonl: missing (summary.json counts 3 epochs)")
    ]


# --------------------------------------------------------------------------- the cache


def test_a_reload_reads_the_cache_instead_of_the_run_files(tmp_path, monkeypatch):
    sweep = messy_sweep(tmp_path)
    first = load_sweep(sweep)
    assert (sweep / ".analysis_cache").is_dir()

    def no_parsing(run_dir):
        raise AssertionError(f"{run_dir} parsed again")

    monkeypatch.setattr(analysis.load, "read_run", no_parsing)
    again = load_sweep(sweep)
    pd.testing.assert_frame_equal(first.runs, again.runs)
    pd.testing.assert_frame_equal(first.curves, again.curves)
    assert first.problems == again.problems


def test_the_cache_rereads_exactly_the_runs_whose_files_changed(tmp_path, monkeypatch):
    sweep = grid_sweep(tmp_path / "s", [{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3}])
    load_sweep(sweep)
    extra = metric_rows([0.4] * 4, [1.0] * 4, [0.9] * 4, [0.6] * 4)[3]
    with open(sweep / "1" / "metrics.jsonl", "a") as f:
        f.write(json.dumps(extra) + "\n")
    parsed = []
    real = analysis.load.read_run
    monkeypatch.setattr(analysis.load, "read_run", lambda d: parsed.append(d.name) or real(d))
    curves = load_sweep(sweep).curves
    assert parsed == ["1"]
    assert curves.groupby("run")["epoch"].max().to_dict() == {"0": 3, "1": 4, "2": 3}


def test_an_unwritable_or_corrupt_cache_is_silently_skipped(tmp_path):
    sweep = grid_sweep(tmp_path / "s", [{"lr": 0.1}, {"lr": 0.2}])
    (sweep / ".analysis_cache").write_text("a file where the cache dir should be")
    assert load_sweep(sweep).runs["lr"].tolist() == [0.1, 0.2]
    (sweep / ".analysis_cache").unlink()
    load_sweep(sweep)
    for cached in (sweep / ".analysis_cache").iterdir():
        cached.write_bytes(b"PAR1 not really parquet")
    assert load_sweep(sweep).runs["lr"].tolist() == [0.1, 0.2]


def test_loading_one_job_of_a_sweep_keeps_the_whole_sweep_cached(tmp_path, monkeypatch):
    sweep = grid_sweep(tmp_path / "s", [{"lr": 0.1}, {"lr": 0.2}])
    load_sweep(sweep)
    load_sweep(sweep / "0")
    monkeypatch.setattr(analysis.load, "read_run", lambda d: pytest.fail(f"{d} parsed again"))
    assert len(load_sweep(sweep).runs) == 2


# --------------------------------------------------------------------------- distributions


def test_distributions_count_exact_zeros_apart_from_the_log_bins(tmp_path):
    train = np.array([0.0, 0.0, 0.0, 1e-9, 0.5, 0.5, 2.0, 5e3, np.inf, np.nan], dtype=np.float32)
    test = np.array([0.05, 0.5, 1.0, 3.0], dtype=np.float32)
    arrays = losses_arrays([1, 3], [train, train], [test, test])
    data = rows()
    write_run(tmp_path / "r", base_config(), data, summary_record(data), job_record(), losses=arrays)
    dists = load_sweep(tmp_path / "r").distributions()
    assert set(dists.columns) == {"run", "epoch", "split", "bin", "kind", "lo", "hi", "count", "fraction"}
    assert len(dists) == 2 * 2 * (110 + 3)
    ep1 = dists[(dists["epoch"] == 1) & (dists["split"] == "train")].set_index("kind")
    assert ep1.loc["zero", "count"] == 3 and ep1.loc["zero", "fraction"] == pytest.approx(0.3)
    assert (ep1.loc["zero", "lo"], ep1.loc["zero", "hi"]) == (0.0, 0.0)
    assert ep1.loc["under", "count"] == 1 and ep1.loc["over", "count"] == 3  # 5e3, inf and nan
    assert dists.groupby(["epoch", "split"])["fraction"].sum().tolist() == pytest.approx([1, 1, 1, 1])
    hist = dists[(dists["kind"] == "hist") & (dists["count"] > 0) & (dists["split"] == "train")]
    # 0.5 and 2.0 land in the left-closed bins containing them
    assert all(((hist["lo"] <= v) & (v < hist["hi"])).any() for v in (0.5, 2.0))
    assert load_sweep(tmp_path / "r").distributions(epochs=[3])["epoch"].unique().tolist() == [3]


def test_pickled_npz_is_refused_not_unpickled(tmp_path):
    data = rows()
    run = write_run(tmp_path / "r", base_config(), data, summary_record(data), job_record())
    np.savez(run / "losses.npz", epochs=np.array([1]), bin_edges=np.array([{"evil": 1}], dtype=object))
    loaded = load_sweep(run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert loaded.distributions().empty
    assert "damaged: losses.npz: does not load" in str(caught[0].message)


def test_subset_matches_tuples_and_missing_values(tmp_path):
    sweep = grid_sweep(
        tmp_path / "s",
        [
            {"model.units": [200]},
            {"model.units": [200, 100]},
            {"model.units": [200], "schedule.name": "step", "schedule.epoch": 25, "schedule.lr2": 0.01},
        ],
    )
    loaded = load_sweep(sweep)
    assert loaded.subset({"model.units": (200,), "schedule.lr2": None}).runs["run"].tolist() == ["0"]
    assert select_rows(loaded.runs, {"schedule.lr2": 0.01})["run"].tolist() == ["2"]
    assert loaded.subset({"model.units": (200, 100)}).curves["run"].unique().tolist() == ["1"]


def test_newest_sweep_is_the_one_written_last_not_the_last_name(tmp_path):
    root = tmp_path / "multirun"
    with pytest.raises(NoRunsFound, match="no sweep dir under"):
        newest_sweep(root)
    dated = make_sweep(root / "2026-11-27" / "10-00-00", {"lr": [0.1]}, seeds=(0,), epochs=2)
    demo = make_sweep(root / "demo", {"lr": [0.1]}, seeds=(0,), epochs=2)
    (demo / "report").mkdir()  # sorts after the sweep's runs, and holds none
    os.utime(dated / "sweep.json", (1_000, 1_000))  # the dated sweep is the older one
    assert newest_sweep(root) == demo
    os.utime(dated / "sweep.json", None)
    os.utime(demo / "sweep.json", (1_000, 1_000))
    assert newest_sweep(root) == dated


def test_what_a_record_keeps_is_not_a_varied_key(tmp_path):
    # experiment=lecture_lr,lecture_lr2: one keeps raw per-sample losses, the other not. Taken as
    # a varied key, it split the lr=0.1 runs from the lr2 runs' reference and cost the figures.
    sweep_dir = make_sweep(
        tmp_path / "s", {"lr": [0.1, 0.2], "trainer.keep_sample_losses": [True, False]}, seeds=(0,), epochs=2
    )
    sweep = load_sweep(sweep_dir)
    assert sweep.runs["trainer.keep_sample_losses"].nunique() == 2  # still a column of the runs table
    assert sweep.group_keys == ["lr"]


def test_a_knob_an_older_record_lacks_takes_the_value_every_newer_record_has(tmp_path):
    # Three seeds of one configuration, two recorded before trainer.channels_last existed: without
    # the fill, "absent" against "auto" split the seeds into two configurations ranked apart.
    sweep_dir = grid_sweep(tmp_path / "s", [{"trainer.seed": seed} for seed in range(3)])
    for run in ("0", "1"):
        path = sweep_dir / run / "config.json"
        config = json.loads(path.read_text())
        del config["trainer"]["channels_last"]
        path.write_text(json.dumps(config))
    sweep = load_sweep(sweep_dir)
    assert sweep.runs["trainer.channels_last"].tolist() == ["auto"] * 3
    assert sweep.varied == ["trainer.seed"]
    assert sweep.rank()["n"].tolist() == [3]


def test_a_label_only_some_runs_carry_stays_absent_from_the_others(tmp_path):
    sweep = load_sweep(grid_sweep(tmp_path / "s", [{"lr": 0.1}, {"lr": 0.1, "tag": "baseline"}]))  # +tag=
    assert sweep.runs["tag"].isna().tolist() == [True, False]
    assert sweep.group_keys == ["tag"]


def test_null_is_a_value_not_an_absent_key(tmp_path):
    # data.train_size=null (the full set) against a 1000-image subset: two configurations.
    sweep = load_sweep(grid_sweep(tmp_path / "s", [{"data.train_size": None}, {"data.train_size": 1000}]))
    assert sweep.runs["data.train_size"].isna().tolist() == [True, False]
    assert sweep.group_keys == ["data.train_size"]


def test_older_records_are_filled_within_the_option_that_has_the_knob():
    from analysis.knobs import fill_older_records

    rows = [
        {"optim.name": "sgd", "optim.momentum": 0.9},
        {"optim.name": "sgd"},  # an sgd record from before the knob
        {"optim.name": "adam"},  # adam has no momentum: stays absent
    ]
    assert fill_older_records("optim.momentum", rows) == [0.9, 0.9, None]


def test_a_run_without_a_summary_counts_its_images_from_its_config(tmp_path):
    # The tie rule's noise needs them: with none, a running run's accuracy had no noise at all.
    sweep = load_sweep(make_sweep(tmp_path / "s", {"lr": [0.1, 0.2]}, seeds=(0,), epochs=4, running=[1]))
    assert sweep.runs["status"].tolist() == ["completed", "running"]
    config = json.loads((tmp_path / "s" / "1" / "config.json").read_text())
    assert not (tmp_path / "s" / "1" / "summary.json").exists()
    assert sweep.runs["n_test"].tolist() == [config["data"]["n_test"]] * 2


def test_a_running_run_of_a_torchvision_data_set_counts_its_official_release(tmp_path):
    """Without summary.json (running) and without a subset, MNIST's run counts 60,000 training and
    10,000 test images, as sweeper.datasets knows the release (not CIFAR-10's counts alone)."""
    config = base_config()
    config["data"] = {"name": "mnist", "train_size": None, "seed": 0}
    write_run(tmp_path / "r", config, rows()[:1], None, job_record())
    runs = load_sweep(tmp_path / "r").runs
    assert runs[["n_train", "n_test"]].values.tolist() == [[60_000, 10_000]]


# --------------------------------------------------------------------------- thread counts


def _threaded_runs(root, device: str, threads: list, key: str = "threads"):
    """One config run twice (seeds 0 and 1), each at its own thread count (None: not recorded)."""
    dirs = []
    for seed, n in enumerate(threads):
        data = rows()
        extra = {"device": device} | ({key: n} if n is not None else {})
        dirs.append(
            write_run(
                root / f"{device}-{seed}",
                base_config(**{"trainer.seed": seed}),
                data,
                summary_record(data, **extra),
                job_record(),
            )
        )
    return dirs


def test_cpu_runs_on_different_thread_counts_are_never_one_configuration(tmp_path):
    loaded = load_sweep(_threaded_runs(tmp_path, "cpu", [1, 2]))
    assert loaded.runs["threads"].tolist() == [1, 2]  # a column of the runs table
    assert "threads" in loaded.varied and "threads" in loaded.group_keys
    assert loaded.rank()["n"].tolist() == [1, 1]


def test_gpu_runs_and_cpu_runs_on_one_thread_count_merge_over_seeds(tmp_path):
    gpu = load_sweep(_threaded_runs(tmp_path, "NVIDIA H100 80GB HBM3", [1, 8]))
    assert gpu.runs["threads"].tolist() == [1, 8] and "threads" not in gpu.varied
    assert gpu.rank()["n"].tolist() == [2]
    same = load_sweep(_threaded_runs(tmp_path / "same", "cpu", [4, 4]))
    assert "threads" not in same.varied and same.rank()["n"].tolist() == [2]


def test_older_records_without_threads_load_and_their_torch_threads_count(tmp_path):
    unrecorded = load_sweep(_threaded_runs(tmp_path / "none", "cpu", [None, None]))
    assert unrecorded.runs["threads"].isna().all() and unrecorded.rank()["n"].tolist() == [2]
    older = load_sweep(_threaded_runs(tmp_path / "older", "cpu", [1, 2], key="torch_threads"))
    assert older.runs["threads"].tolist() == [1, 2] and "threads" in older.varied


# --------------------------------------------------------------------------- _target_


def test_runs_that_differ_only_in_a_target_are_two_configurations_named_by_class(tmp_path):
    """-m optim._target_=torch.optim.Adam,torch.optim.NAdam: two configurations, not one of n=2."""
    sweep = grid_sweep(
        tmp_path / "s", [{"optim._target_": "torch.optim.Adam"}, {"optim._target_": "torch.optim.NAdam"}]
    )
    loaded = load_sweep(sweep)
    assert loaded.varied == ["optim._target_"]
    assert loaded.runs["optim._target_"].tolist() == ["torch.optim.Adam", "torch.optim.NAdam"]
    assert loaded.rank()["n"].tolist() == [1, 1]
    assert analysis.knobs.format_knob("optim._target_", "torch.optim.NAdam") == "NAdam"
    assert analysis.knobs.format_knob("lr", "torch.optim.NAdam") == "torch.optim.NAdam"
    constant = load_sweep(grid_sweep(tmp_path / "c", [{"lr": 0.1}, {"lr": 0.2}]))
    assert "model._target_" in constant.runs and constant.varied == ["lr"]  # a column, never dropped


def test_a_relative_dir_is_resolved_from_the_first_base_that_holds_it(tmp_path):
    (tmp_path / "launched" / "outputs" / "s").mkdir(parents=True)
    (tmp_path / "root" / "outputs" / "s").mkdir(parents=True)
    (tmp_path / "root" / "outputs" / "t").mkdir(parents=True)
    bases = [None, tmp_path / "launched", tmp_path / "root"]
    assert analysis.discovery.resolve_dir("outputs/s", bases) == tmp_path / "launched" / "outputs" / "s"
    assert analysis.discovery.resolve_dir("outputs/t", bases) == tmp_path / "root" / "outputs" / "t"
    assert analysis.discovery.resolve_dir("outputs/u", bases) == Path(
        "outputs/u"
    )  # the error names it as given
    assert analysis.discovery.resolve_dir(tmp_path / "x", bases) == tmp_path / "x"


def test_the_parquet_cache_needs_a_pyarrow_past_cve_2023_47248():
    """The cache reads parquet files inside sweep dirs; pyarrow 14.0.0 and older run code from a
    crafted one (CVE-2023-47248, fixed in 14.0.1)."""
    import re

    from packaging.requirements import Requirement  # pytest's own dependency

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    pyarrow = Requirement(re.search(r'"(pyarrow\b[^"]*)"', pyproject).group(1))
    assert not pyarrow.specifier.contains("14.0.0") and pyarrow.specifier.contains("14.0.1")


def test_a_record_written_under_former_names_reads_as_one_written_under_todays(tmp_path):
    """schedule.decay (config.json) and metrics.jsonl's `lr` of an older record show as
    schedule.gamma and epoch_lr, the columns a record written today has (sweeper.schema)."""
    old_rows = rows(lr=0.1)  # metric_rows writes the per-epoch rate as `lr`, as older runs did
    new_rows = [{("epoch_lr" if k == "lr" else k): v for k, v in row.items()} for row in rows(lr=0.2)]
    old_config = base_config(lr=0.1, **{"schedule.name": "geometric", "schedule.decay": 0.9})
    new_config = base_config(lr=0.2, **{"schedule.name": "geometric", "schedule.gamma": 0.8})
    write_run(tmp_path / "old", old_config, old_rows, summary_record(old_rows), job_record())
    write_run(tmp_path / "new", new_config, new_rows, summary_record(new_rows), job_record())
    loaded = load_sweep([tmp_path / "old", tmp_path / "new"])
    assert loaded.runs.set_index("run")["schedule.gamma"].to_dict() == {"old": 0.9, "new": 0.8}
    assert "schedule.decay" not in loaded.runs and loaded.varied == ["lr", "schedule.gamma"]
    by_run = loaded.curves.groupby("run")["epoch_lr"].agg(list).to_dict()
    assert by_run == {"old": [0.1] * 3, "new": [0.2] * 3}
    knob = loaded.curves.groupby("run")["lr"].agg(list).to_dict()  # the knob, not the per-epoch rate
    assert knob == {"old": [0.1] * 3, "new": [0.2] * 3}


def test_a_users_own_schedule_keeps_its_keys_named_like_a_former_knob(tmp_path):
    """Only the project's own options had the renamed knobs: a user's schedule with its own
    `epoch` and `decay` shows them under their names, not as schedule.switch_epoch and gamma."""
    schedule = {"schedule._target_": "mysched.Warm", "schedule.name": "warm"}
    config = base_config(**schedule, **{"schedule.epoch": 3, "schedule.decay": 0.5})
    data = rows()
    write_run(tmp_path / "r", config, data, summary_record(data), job_record())
    runs = load_sweep(tmp_path / "r").runs
    assert runs[["schedule.epoch", "schedule.decay"]].values.tolist() == [[3, 0.5]]
    assert "schedule.switch_epoch" not in runs and "schedule.gamma" not in runs


def test_the_lr_range_reads_a_steps_file_written_under_either_name_of_the_step_lr(tmp_path):
    from analysis.lr_range import read_steps

    for name, column in (("old", "lr"), ("new", "step_lr")):
        (tmp_path / name).mkdir()
        lines = [json.dumps({"step": s, "epoch": 1, column: 0.01 * s, "loss": 1.0}) for s in (1, 2)]
        (tmp_path / name / "steps.jsonl").write_text("\n".join(lines) + "\n")
        assert read_steps(tmp_path / name)["step_lr"].tolist() == [0.01, 0.02]


def test_a_summary_status_outside_the_records_vocabulary_is_damage_named_with_the_allowed_ones(tmp_path):
    data = rows()
    write_run(tmp_path / "r", base_config(), data, {**summary_record(data), "status": "done"}, job_record())
    loaded = load_sweep(tmp_path / "r")
    assert loaded.runs["status"].tolist() == ["damaged"]
    (reason,) = [reason for _, reason in loaded.problems]
    assert reason.startswith('damaged: summary.json: status "done", not one of completed, stopped_early')

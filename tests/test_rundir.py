"""The run directory's lifecycle (sweeper/rundir.py) on records written under former names."""

import json

from sweeper import rundir, train
from sweeper.runlog import RunLog, complete_lines
from sweeper.schema import RENAMED_COLUMNS, RENAMED_KEYS, renamed
from tests.conftest import compose_cfg


def test_a_recorded_configs_former_key_names_are_compared_under_todays_names():
    old = {"schedule": {"name": "geometric", "decay": 0.9}, "data": {"n_train": 300, "n_test": 100}}
    new = {
        "schedule": {"name": "geometric", "gamma": 0.9},
        "data": {"generated_train": 300, "generated_test": 100},
    }
    assert rundir.config_difference(old, new) == []
    # a value that differs still does, under today's name
    new["schedule"]["gamma"] = 0.8
    assert rundir.config_difference(old, new) == ["schedule.gamma: 0.9 -> 0.8"]


def test_a_users_own_schedule_key_named_like_a_former_knob_is_not_taken_for_todays_knob():
    """A user's schedule's own `epoch` is not the step schedule's switch_epoch: a resume under a
    schedule that names it switch_epoch is another config; a record holding both names keeps both."""
    mine = {"schedule": {"_target_": "mysched.Warm", "epoch": 3}}
    theirs = {"schedule": {"_target_": "mysched.Warm", "switch_epoch": 3}}
    assert rundir.config_difference(mine, theirs) == [
        "schedule.epoch: 3 -> None",
        "schedule.switch_epoch: None -> 3",
    ]
    assert rundir.config_difference(mine, mine) == []
    both = {"data.n_train": 1, "data.generated_train": 2}
    assert renamed(both) == both
    assert renamed({"data.n_train": 1}) == {"data.generated_train": 1}


def test_a_metrics_or_steps_line_written_with_lr_is_read_with_todays_column(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "lr": 0.1}\n{"epoch": 2, "epoch_lr": 0.05}\n')
    (tmp_path / "steps.jsonl").write_text('{"step": 1, "lr": 0.1}\n')
    assert complete_lines(tmp_path / "metrics.jsonl") == [
        {"epoch": 1, "epoch_lr": 0.1},
        {"epoch": 2, "epoch_lr": 0.05},
    ]
    assert complete_lines(tmp_path / "steps.jsonl") == [{"step": 1, "step_lr": 0.1}]


def write_the_old_way(run_dir):
    """Rewrite a record as a version before the renames wrote it: config.json's keys and the
    metrics/steps columns under their former names."""
    config = json.loads((run_dir / "config.json").read_text())
    for former, today in RENAMED_KEYS.items():
        *parents, last = today.split(".")
        node = config
        for p in parents:
            node = node.get(p, {})
        if last in node:
            node[former.rsplit(".", 1)[1]] = node.pop(last)
    (run_dir / "config.json").write_text(json.dumps(config))
    for name, columns in RENAMED_COLUMNS.items():
        path = run_dir / name
        if path.exists():
            back = {v: k for k, v in columns.items()}
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            path.write_text(
                "".join(json.dumps({back.get(k, k): v for k, v in r.items()}) + "\n" for r in rows)
            )


def test_a_record_written_under_former_names_resumes_and_an_ended_one_is_skipped(tmp_path):
    args = ("schedule=geometric", "trainer.log_steps=true")
    paused = compose_cfg(*args, "trainer.until_epoch=1")
    assert train.run(paused, tmp_path / "run")["status"] == "paused"
    write_the_old_way(tmp_path / "run")
    assert train.run(compose_cfg(*args), tmp_path / "run")["status"] == "completed"
    assert not (tmp_path / "run" / "attempts").exists()  # resumed, not set aside
    rows = RunLog(tmp_path / "run").read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2] and all("epoch_lr" in r and "lr" not in r for r in rows)
    write_the_old_way(tmp_path / "run")
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()}
    assert train.run(compose_cfg(*args), tmp_path / "run")["status"] == "completed"
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()} == before  # skipped


def test_the_record_modules_the_analysis_reads_import_without_torch():
    # the analysis reads statuses, record lists and job states from them: torch's import is seconds
    import subprocess
    import sys

    from tests.conftest import REPO

    code = "import sys, sweeper.sweep, sweeper.rundir, sweeper.runlog, sweeper.submitted; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

"""analysis.status: the job table of a sweep in progress, missing jobs included."""

from __future__ import annotations

from analysis.status import format_job_table, job_table
from tests.fake_runs import base_config, job_record, metric_rows, summary_record, write_run, write_sweep_json


def sweep_in_progress(root):
    """Jobs: 0 completed, 1 running (SLURM), 2 failed, 3 diverged, 4 listed but absent, 5 dir without record."""
    sweep = root / "sweep"
    overrides = [[f"lr={lr}", "model.channels=16"] for lr in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)]
    write_sweep_json(sweep, overrides, launcher="submitit_slurm")
    rows = metric_rows([1.0, 0.5, 0.2], [1.1, 0.9, 1.0], [0.6, 0.8, 0.9], [0.55, 0.6, 0.61])
    config = base_config(**{"trainer.epochs": 3})
    write_run(sweep / "0", config, rows, summary_record(rows, epochs=3), job_record(overrides[0], 0))
    write_run(
        sweep / "1",
        config,
        rows[:1],
        None,
        job_record(overrides[1], 1, slurm_job_id="7743", slurm_array_job_id="7741", slurm_array_task_id="1"),
    )
    write_run(
        sweep / "2",
        config,
        rows[:2],
        summary_record(rows[:2], "failed", epochs=3, error="OSError: disk full"),
        job_record(overrides[2], 2),
    )
    nan_row = dict(rows[2], train_loss=float("nan"), test_loss=float("nan"))
    write_run(
        sweep / "3",
        config,
        [*rows[:2], nan_row],
        summary_record([*rows[:2], nan_row], "diverged", epochs=3),
        job_record(overrides[3], 3),
    )
    (sweep / "5" / ".hydra").mkdir(parents=True)
    return sweep


def test_job_table_has_every_listed_job_with_its_state(tmp_path):
    table = job_table(sweep_in_progress(tmp_path))
    assert table["job"].tolist() == [0, 1, 2, 3, 4, 5]
    assert table["status"].tolist() == ["completed", "running", "failed", "diverged", "missing", "missing"]
    assert table["epochs"].tolist() == ["3/3", "1/3", "2/3", "3/3", "", ""]
    assert table.loc[1, "slurm_id"] == "7741_1"  # what squeue shows, not the task's own SLURM_JOB_ID
    assert table.loc[2, "error"] == "OSError: disk full"
    assert table.loc[4, "overrides"] == "lr=0.5 model.channels=16"  # from sweep.json: the job never wrote one


def test_status_text_fits_one_screen_and_names_the_slurm_job(tmp_path):
    sweep = sweep_in_progress(tmp_path)
    text = format_job_table(job_table(sweep), width=100)
    lines = text.splitlines()
    assert lines[0].endswith("/sweep: 6 jobs: 1 failed, 1 diverged, 1 running, 2 missing, 1 completed")
    assert lines[1] == "common overrides: model.channels=16"  # said once, not on every row
    assert lines[2].split() == ["job", "status", "epochs", "last", "write", "slurm", "overrides"]
    assert lines[3].split() == ["0", "completed", "3/3", lines[3].split()[3], "lr=0.1"]
    assert "7741_1" in lines[4] and "running" in lines[4]
    assert "[OSError: disk full]" in lines[5]
    assert lines[7].split() == ["4", "missing", "lr=0.5"]
    assert all(len(line) <= 100 for line in lines)


def test_a_long_sweep_shows_the_unfinished_jobs_first_and_counts_the_rest(tmp_path):
    sweep = tmp_path / "big"
    write_sweep_json(sweep, [[f"trainer.seed={i}"] for i in range(30)])
    rows = metric_rows([1.0], [1.0], [0.5], [0.5])
    for i in range(29):
        write_run(
            sweep / str(i), base_config(), rows, summary_record(rows), job_record([f"trainer.seed={i}"], i)
        )
    text = format_job_table(job_table(sweep), width=100, max_rows=10)
    lines = text.splitlines()
    assert len(lines) == 1 + 1 + 10 + 1  # counts, header, 10 jobs, the note (no override is common)
    assert lines[-1] == "… 20 completed jobs not shown (--all lists every job)"
    assert any(line.split()[:2] == ["29", "missing"] for line in lines)
    assert len(format_job_table(job_table(sweep), width=100, max_rows=10, show_all=True).splitlines()) == 32


def test_a_job_handed_to_slurm_without_a_record_yet_is_submitted_with_its_id(tmp_path):
    from sweeper import submitted

    sweep = tmp_path / "sweep"
    write_sweep_json(sweep, [["lr=0.1"], ["lr=0.2"], ["lr=0.3"]], launcher="submitit_slurm")
    submitted.record(sweep, {0: "27_0", 1: "27_1"})  # job 2's array was not taken (yet)
    table = job_table(sweep).set_index("job")
    assert list(table["status"]) == ["submitted", "submitted", "missing"]  # was: all missing, no id
    assert list(table["slurm_id"][:2]) == ["27_0", "27_1"]
    assert "27_1" in format_job_table(table.reset_index())

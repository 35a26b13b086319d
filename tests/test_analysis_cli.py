"""python -m analysis: the report directory, the status command, and one-line refusals."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from analysis.__main__ import main
from tests.conftest import REPO, run_cli
from tests.fake_runs import make_sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def sweep(tmp_path) -> Path:
    """16 jobs: lr x channels x (constant | 0.01 after epoch 5) x 2 seeds; job 3 diverges, job 6 runs."""
    return make_sweep(
        tmp_path / "multirun/2026-11-26/23-59-00",
        {"lr": [0.2, 0.05], "model.channels": [16, 32], "schedule": ["constant", ("step", 5, 0.01)]},
        seeds=(0, 1),
        epochs=10,
        n_train=500,
        n_test=200,
        diverge=[3],
        running=[6],
    )


def test_report_writes_markdown_figures_and_tables(sweep, capsys):
    assert main([str(sweep)]) == 0
    out = sweep / "report"
    assert capsys.readouterr().out.splitlines()[-1] == f"report: {out / 'report.md'}"
    md = (out / "report.md").read_text()
    for section in (
        "## Runs",
        "## Problems",
        "## Ranking by `final_test_acc`",
        "## Diagnostics",
        "## Figures",
    ):
        assert section in md
    assert "diverged at epoch 2" in md
    figures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md)
    assert {
        "curves_by_lr.png",
        "curves_by_model.channels.png",
        "lr_switch.png",
        "loss_vs_accuracy.png",
        "loss_distributions.png",
        "heatmap_model.channels_by_lr.png",
    } <= set(figures)
    for name in figures:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 16 and runs["status"].value_counts().to_dict() == {
        "completed": 14,
        "diverged": 1,
        "running": 1,
    }
    # The lecture's overfitting view is drawn for the configuration whose test loss ends furthest
    # above its train loss too, when that is not the best one; its caption names the epochs shown.
    done = runs[runs["status"] == "completed"]
    keys = ["lr", "model.channels", "schedule.name"]
    gap = done.groupby(keys, dropna=False)["final_gen_gap_loss"].mean()
    most = dict(zip(keys, gap.idxmax(), strict=True))
    caption = next(line for line in md.splitlines() if "of the configuration that overfits most" in line)
    assert (
        f"lr={most['lr']}, model.channels={most['model.channels']}, schedule.name={most['schedule.name']}"
        in caption
    )
    assert "loss_distributions_most_overfit.png" in figures
    assert "at epochs 1, 2, 4, 5, 6, 7, 9, 10 (8 of the 10 kept: 3, 8 left out)" in caption
    curves = pd.read_parquet(out / "curves.parquet")
    assert curves.groupby("run")["epoch"].max().sum() == 14 * 10 + 2 + 5
    assert pd.read_csv(out / "ranking.csv")["rank"].iloc[0] == 1
    for name in ("runs", "curves", "ranking", "diagnostics", "problems"):
        assert (out / f"{name}.csv").is_file() and (out / f"{name}.parquet").is_file()


def test_the_report_counts_runs_apart_from_jobs_not_started(sweep, capsys):
    import shutil

    shutil.rmtree(sweep / "15")  # listed in sweep.json, no run dir yet
    assert main([str(sweep)]) == 0
    md = (sweep / "report" / "report.md").read_text()
    assert "- 15 runs: 13 completed, 1 diverged, 1 running; 1 job not started" in md


def test_report_of_a_single_run_skips_the_figures_that_need_varied_keys(sweep, tmp_path, capsys):
    out = tmp_path / "single"
    assert main([str(sweep / "0"), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "- `heatmap` skipped: needs two varied keys (besides the seed)" in md
    assert "- `lr_switch` skipped: no runs with schedule.name=step" in md
    assert (out / "loss_vs_accuracy.png").is_file() and (out / "curves.png").is_file()


def test_a_report_of_one_run_says_1_run_and_1_problem_in_the_singular(sweep, tmp_path, capsys):
    """It said "1 runs (1 diverged), 1 problems"."""
    assert main([str(sweep / "3"), "--out", str(tmp_path / "one")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "1 run (1 diverged), 1 problem"
    assert "- 1 run: 1 diverged" in (tmp_path / "one" / "report.md").read_text()


def test_status_prints_the_job_table(sweep, capsys):
    assert main(["status", str(sweep)]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].endswith(": 16 jobs: 1 diverged, 1 running, 14 completed")
    assert re.search(r"^6\s+running\s+5/10", text, re.MULTILINE)


@pytest.mark.parametrize(
    "argv",
    [
        ["does/not/exist"],
        ["{empty}"],
        [],
        ["{sweep}", "--metric", "n_params"],
        ["{sweep}", "--out", "{sweep}/sweep.json/report"],
        ["{sweep}", "--bogus"],
        ["status", "does/not/exist"],
        ["status", "{empty}"],
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_2(argv, sweep, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = [a.format(sweep=sweep, empty=tmp_path / "empty") for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("analysis: error: ")


def test_a_combined_report_needs_its_own_dir_and_leaves_each_sweeps_report_alone(sweep, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(sweep, other)
    assert main([str(other)]) == 0
    own = (other / "report" / "report.md").read_text()
    assert main([str(other), str(sweep)]) == 2  # the default would be other/report/: refused
    assert capsys.readouterr().err.startswith(
        "analysis: error: 2 sweep dirs: name the combined report's dir with --out"
    )
    assert (other / "report" / "report.md").read_text() == own
    assert main([str(other), str(sweep), "--out", str(tmp_path / "both")]) == 0
    assert (tmp_path / "both" / "report.md").exists()
    assert (other / "report" / "report.md").read_text() == own


def test_the_module_entry_point_runs_and_refuses_without_a_traceback(sweep):
    ok = run_cli("status", str(sweep), cwd=REPO, module="analysis", timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "16 jobs" in ok.stdout.splitlines()[0]
    bad = run_cli(str(sweep / "nope"), cwd=REPO, module="analysis", timeout=120)
    assert bad.returncode == 2
    assert bad.stderr == f"analysis: error: {sweep / 'nope'}: no such directory\n"


def test_lr_gets_its_curves_first_when_more_keys_vary_than_figures_are_drawn(tmp_path):
    from analysis import load_sweep
    from analysis.report import MAX_HUE_FIGURES, standard_figures

    # Seven knobs vary; lr comes last in config order, but it is the protocol's first knob.
    grid = {"model.kernel_size": (3, 5), "model.pool": (2, 3), "model.padding": (0, 1)}
    grid |= {"optim.momentum": (0.0, 0.9), "trainer.batch_size": (50, 100), "data.train_size": (500, 1000)}
    grid |= {"lr": (0.05, 0.1)}
    sweep = load_sweep(make_sweep(tmp_path / "s", grid, seeds=(0,), epochs=2))
    drawn = {d.name: d for d in standard_figures(sweep)}
    assert "curves_by_lr" in drawn and drawn["curves_by_lr"].figure is not None
    assert drawn["curves_by_more_keys"].skipped == (
        f"curves are drawn for {MAX_HUE_FIGURES} varied keys at most; not for trainer.batch_size "
        "(analysis.plot_curves draws any)"
    )


def test_a_figure_over_every_varied_key_says_no_other_keys_instead_of_the_only_configuration(
    tmp_path, capsys
):
    sweep = make_sweep(tmp_path / "s", {"lr": [0.2, 0.05], "model.channels": [16, 32]}, seeds=(0,), epochs=3)
    assert main([str(sweep)]) == 0
    md = (sweep / "report" / "report.md").read_text()
    assert (
        "Mean `final_test_acc` over `model.channels` x `lr`.\n" in md
    )  # was "; other keys at the only configuration"
    assert "the only configuration" not in md


def test_a_damaged_losses_file_is_a_note_under_the_distributions_figure(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "s", {"lr": [0.2, 0.05]}, seeds=(0,), epochs=3)
    for npz in sweep.glob("*/losses.npz"):
        npz.write_bytes(b"not a zip")
    assert main([str(sweep)]) == 0
    assert "Warning" not in capsys.readouterr().err  # said in the report, not as a raw warning
    md = (sweep / "report" / "report.md").read_text()
    skipped = next(line for line in md.splitlines() if line.startswith("- `loss_distributions` skipped"))
    assert "losses.npz" in skipped and "run 0" in skipped  # which file, not just "no data"


def test_with_no_run_completed_the_ranking_says_how_each_configuration_ended(tmp_path, capsys):
    sweep_dir = make_sweep(tmp_path / "s", {"lr": [0.1, 0.2]}, seeds=(0,), epochs=10, running=[0, 1])
    assert main([str(sweep_dir)]) == 0
    md = (sweep_dir / "report" / "report.md").read_text()
    assert "**No run completed**" in md
    ranking = pd.read_csv(sweep_dir / "report" / "ranking.csv")
    assert ranking["runs"].tolist() == ["running at epoch 5"] * 2


def test_the_per_knob_curves_show_the_test_loss_and_the_runs_table_its_final_value(sweep, capsys):
    from analysis import load_sweep
    from analysis.plots import metric_label
    from analysis.report import standard_figures

    drawn = next(d for d in standard_figures(load_sweep(sweep)) if d.name == "curves_by_lr")
    labels = [ax.get_ylabel() for ax in drawn.figure.axes]
    assert labels == [metric_label(m) for m in ("train_loss", "test_loss", "test_acc")]
    assert [ax.get_yscale() for ax in drawn.figure.axes] == ["log", "log", "linear"]
    assert main([str(sweep)]) == 0
    runs_header = (sweep / "report" / "report.md").read_text().split("## Runs")[1].splitlines()[2]
    assert "| final_test_loss |" in runs_header


def test_the_lr_switch_caption_mentions_grey_reference_lines_only_when_there_are_some(tmp_path, sweep):
    from analysis import load_sweep
    from analysis.report import standard_figures

    def caption(sweep_dir) -> str:
        return next(d.caption for d in standard_figures(load_sweep(sweep_dir)) if d.name == "lr_switch")

    assert "Grey: the same runs without a switch." in caption(sweep)  # constant and step runs
    steps_only = make_sweep(
        tmp_path / "steps", {"schedule": [("step", 5, 0.01), ("step", 5, 0.02)]}, seeds=(0,)
    )
    assert "Grey" not in caption(steps_only)


def test_the_capacity_table_gives_each_configuration_a_fit_state(sweep, capsys):
    assert main([str(sweep)]) == 0
    md = (sweep / "report" / "report.md").read_text()
    section = md.split("### Capacity")[1].split("###")[0]
    header = next(line for line in section.splitlines() if line.startswith("| "))
    assert header.endswith("| final_train_acc | final_test_acc | state |")
    states = [line.rsplit("|", 2)[1].strip() for line in section.splitlines() if line.startswith("| ")][2:]
    assert states and set(states) <= {"underfits", "overfits", "neither", ""}
    diagnostics = pd.read_csv(sweep / "report" / "diagnostics.csv")
    assert "state" in diagnostics.columns


def test_status_of_one_run_says_one_job(sweep, capsys):
    assert main(["status", str(sweep / "0")]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(": 1 job: 1 completed")


def test_every_metric_offered_is_accepted(sweep, tmp_path, capsys):
    assert main([str(sweep), "--metric", "nope", "--out", str(tmp_path / "r")]) == 2
    offered = capsys.readouterr().err.split("choose one of ")[1].strip().split(", ")
    assert "time_s" in offered and "final_test_acc" in offered
    assert main([str(sweep), "--metric", "time_s", "--out", str(tmp_path / "r")]) == 0


def test_a_reader_that_stops_early_gets_no_traceback(sweep):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "analysis", "status", str(sweep), "--all"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    proc.stdout.close()  # `| head -0`: gone before the table is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert err == ""


def test_sweeps_combined_that_repeat_a_seed_are_flagged_in_the_ranking(tmp_path, capsys):
    # lecture_lr and lecture_test_loss both ran lr=0.1 at seed 0: n=4 counted it twice, silently.
    a = make_sweep(tmp_path / "a", {"lr": [0.1, 0.2]}, seeds=(0,), epochs=3)
    b = make_sweep(tmp_path / "b", {"lr": [0.1]}, seeds=(0, 1, 2), epochs=3)
    assert main([str(a), str(b), "--out", str(tmp_path / "both")]) == 0
    ranking = pd.read_csv(tmp_path / "both" / "ranking.csv").set_index("lr")
    assert ranking.loc[0.1, "n"] == 4 and ranking.loc[0.1, "seeds"] == 3
    assert "**Repeated seeds**" in (tmp_path / "both" / "report.md").read_text()
    assert main([str(b), "--out", str(tmp_path / "alone")]) == 0  # distinct seeds: no such column
    assert "seeds" not in pd.read_csv(tmp_path / "alone" / "ranking.csv").columns

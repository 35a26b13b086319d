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

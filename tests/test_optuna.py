"""hydra/sweeper=optuna with the project's records: trainer.objective is what a run returns, checked
in one line before launch; a study's sweep.json, end summary and report; a run without a result is
a failed trial, and the study goes on. The sweeps skip without the optional extra
(`pip install -e '.[optuna]'`)."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
from omegaconf import OmegaConf

from sweeper import objective
from sweeper.validate import ConfigError
from tests.conftest import TINY, compose_cfg, run_cli

# Only the studies need the extra: the objective's tests run without it.
needs_optuna = pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
    reason="hydra-optuna-sweeper is not installed (pip install -e '.[optuna]')",
)
STUDY = ["hydra/sweeper=optuna", "hydra.sweeper.direction=maximize", "trainer.objective=final_test_acc"]


# --------------------------------------------------------------------------- trainer.objective


def test_an_unknown_objective_is_refused_naming_the_allowed_keys():
    with pytest.raises(ConfigError, match=r"^trainer.objective=best_test_ac is invalid: allowed values are "):
        objective.check(compose_cfg("trainer.objective=best_test_ac"))
    objective.check(compose_cfg("trainer.objective=min_test_loss"))  # a summary.json key: accepted
    objective.check(compose_cfg())  # null, the default: the run returns its status


def test_a_validation_objective_needs_a_validation_split():
    cfg = compose_cfg("trainer.objective=best_val_acc")  # data.val_size: null, or not yet a knob
    with pytest.raises(ConfigError, match=r"val needs a validation split: set data.val_size"):
        objective.check(cfg)


def test_the_objective_names_follow_the_splits_and_metrics():
    cfg = OmegaConf.create({"trainer": {"metrics": ["acc", "top5"]}, "data": {"val_size": None}})
    assert "final_test_top5" in objective.names(cfg) and "best_val_acc" not in objective.names(cfg)
    cfg.data.val_size = 50
    assert {"final_val_top5", "best_val_acc", "min_val_loss"} <= set(objective.names(cfg))


def test_a_result_returns_the_objective_as_a_float_and_anything_else_a_status():
    cfg = compose_cfg("trainer.objective=final_test_acc")
    assert objective.returned(cfg, {"status": "completed", "final_test_acc": 0.5}) == 0.5
    assert objective.returned(cfg, {"status": "stopped_early", "final_test_acc": 0.4}) == 0.4
    # No result: a string, which hydra-optuna-sweeper records as a failed trial (never a NaN value).
    assert objective.returned(cfg, {"status": "diverged", "final_test_acc": None}) == "diverged"
    assert objective.returned(cfg, {"status": "failed"}) == "failed"
    missing = objective.returned(cfg, {"status": "completed", "final_test_acc": math.nan})
    assert missing == "completed, but summary.json has no final_test_acc"
    assert objective.returned(compose_cfg(), {"status": "completed", "final_test_acc": 0.5}) == "completed"


def test_a_bad_objective_is_refused_before_a_run_starts(tmp_path):
    result = run_cli(
        *TINY, "trainer.objective=final_tst_acc", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: trainer.objective=final_tst_acc is invalid: allowed values are final_train_loss")
    )
    assert not (tmp_path / "run" / "config.json").exists()


# --------------------------------------------------------------------------- studies


def _search_space(tmp_path, params: str) -> list[str]:
    """hydra.sweeper.params from a config file (+search=space), as a study's config would hold it."""
    (tmp_path / "conf" / "search").mkdir(parents=True)
    (tmp_path / "conf" / "search" / "space.yaml").write_text(
        f"# @package _global_\nhydra:\n  sweeper:\n    params:\n{params}"
    )
    return ["--config-dir", str(tmp_path / "conf"), "+search=space"]


@needs_optuna
@pytest.mark.slow
def test_a_six_trial_study_over_an_interval_completes_and_the_report_reads_it(tmp_path):
    sweep_dir = tmp_path / "study"
    space = _search_space(tmp_path, "      lr: tag(log, interval(0.01, 0.3))\n")
    result = run_cli(
        "-m", *space, *STUDY, "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=1",
        "hydra.sweeper.sampler.seed=0", *TINY, "trainer.epochs=1", f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"sweep {sweep_dir}: 6 jobs: 6 completed" in result.stdout
    assert "study: best value " in result.stdout
    listed = json.loads((sweep_dir / "sweep.json").read_text())
    assert listed["sweeper"] == "optuna" and [j["dir"] for j in listed["jobs"]] == [str(i) for i in range(6)]
    lrs = {float(next(o for o in j["overrides"] if o.startswith("lr="))[3:]) for j in listed["jobs"]}
    assert len(lrs) > 1 and all(0.01 <= lr <= 0.3 for lr in lrs)  # drawn by Optuna, inside the interval

    report = run_cli(str(sweep_dir), module="analysis", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    md = (sweep_dir / "report" / "report.md").read_text()
    assert "- 6 runs: 6 completed" in md
    assert "## Optuna study" in md and "best value" in md.split("## Optuna study")[1]


@needs_optuna
@pytest.mark.slow
def test_a_diverged_trial_fails_and_the_study_goes_on(tmp_path):
    """lr=1e5 diverges: its trial fails (the run returns its status, not a number) and the study
    goes on to its next trials, one at a time; the seeded sampler draws 1e5, 0.1, 1e5."""
    sweep_dir = tmp_path / "study"
    result = run_cli(
        "-m", *STUDY, "hydra.sweeper.sampler.seed=0", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=1",
        "lr=choice(0.1,100000)", *TINY, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert "Return value must be float-castable. Got 'diverged'" in result.stdout + result.stderr
    assert f"sweep {sweep_dir}: 3 jobs: 1 completed, 2 diverged" in result.stdout
    assert "study: best value " in result.stdout and "at lr=0.1 " in result.stdout
    assert result.returncode == 1  # as for any sweep with a job that did not complete


@needs_optuna
def test_a_study_is_checked_at_its_intervals_ends_before_any_trial(tmp_path):
    space = _search_space(tmp_path, "      lr: interval(-1, 0.3)\n")
    result = run_cli(
        "-m", *space, *STUDY, "hydra.sweeper.n_trials=2", *TINY, f"hydra.sweep.dir={tmp_path / 's'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: the search space at lr=-1.0: lr=-1.0 is invalid: must be a number > 0" in result.stderr
    assert not list((tmp_path / "s").glob("*/config.json"))


@needs_optuna
def test_a_study_without_an_objective_is_refused(tmp_path):
    result = run_cli(
        "-m", "hydra/sweeper=optuna", "lr=choice(0.1,0.2)", *TINY, f"hydra.sweep.dir={tmp_path / 's'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: trainer.objective=null is invalid for hydra/sweeper=optuna" in result.stderr


@needs_optuna
def test_a_study_into_a_dir_holding_trials_is_refused(tmp_path):
    (tmp_path / "s" / "0").mkdir(parents=True)
    (tmp_path / "s" / "0" / "job.json").write_text("{}")
    result = run_cli(
        "-m", *STUDY, "lr=choice(0.1,0.2)", *TINY, f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "holds the trials of an earlier sweep" in result.stderr


@needs_optuna
@pytest.mark.slow
def test_a_study_over_an_interval_on_the_command_line_completes(tmp_path):
    sweep_dir = tmp_path / "study"
    result = run_cli(
        "-m", *STUDY, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", "lr=tag(log,interval(0.01,0.3))",
        *TINY, "trainer.epochs=1", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"sweep {sweep_dir}: 2 jobs: 2 completed" in result.stdout

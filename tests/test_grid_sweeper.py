"""The default sweeper (hydra_plugins/sweeper_grid) runs Hydra's grid, composing each job once."""

import json
import sys
from collections import Counter

import cloudpickle
import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.global_hydra import GlobalHydra

from hydra_plugins.sweeper_grid.grid import ComposedOnce
from tests.conftest import CONF, TINY, run_cli


class CountingLoader:
    """A stand-in config loader: returns a fresh object per compose and counts them."""

    def __init__(self):
        self.composed = 0
        self.searchpath = "conf"

    def load_sweep_config(self, master_config, sweep_overrides):
        self.composed += 1
        return {"overrides": list(sweep_overrides)}


def test_a_job_composed_for_the_check_is_handed_to_the_launcher_once():
    loader = ComposedOnce(CountingLoader())
    checked = loader.compose(None, ["lr=0.1"])
    assert loader.load_sweep_config(None, ["lr=0.1"]) is checked  # the launcher's: not composed again
    assert loader.loader.composed == 1
    again = loader.load_sweep_config(None, ["lr=0.1"])  # a second request composes afresh
    assert again == checked and again is not checked and loader.loader.composed == 2
    assert loader.searchpath == "conf"  # the rest is the loader's


def test_a_pickled_loader_leaves_its_pending_configs_behind():
    loader = ComposedOnce(CountingLoader())
    loader.compose(None, ["lr=0.1"])
    remote = cloudpickle.loads(cloudpickle.dumps(loader))  # as the launchers ship their context to a job
    assert remote.composed == {} and remote.load_sweep_config(None, ["lr=0.1"]) == {"overrides": ["lr=0.1"]}


def test_the_grid_sweeper_is_the_default():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="config", return_hydra_config=True)
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.sweeper_grid.grid.GridSweeper"


def sweep_here(monkeypatch, tmp_path, *overrides: str) -> Counter:
    """Run `python -m sweeper -m` with a 3-job lr grid in this process; returns how many times
    each job's config was composed, by its lr override."""
    composed, load = [], ConfigLoaderImpl.load_sweep_config

    def counting(self, master_config, sweep_overrides):
        composed.append(sweep_overrides[-1])
        return load(self, master_config, sweep_overrides)

    monkeypatch.setattr(ConfigLoaderImpl, "load_sweep_config", counting)
    argv = [
        "sweeper",
        "-m",
        *TINY,
        "trainer.epochs=1",
        *overrides,
        "lr=0.2,0.1,0.01",
        f"hydra.sweep.dir={tmp_path}",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    from sweeper.__main__ import main

    GlobalHydra.instance().clear()
    main()
    GlobalHydra.instance().clear()
    return Counter(composed)


@pytest.mark.parametrize("batch", [[], ["hydra.sweeper.max_batch_size=2"]], ids=["one-batch", "batches-of-2"])
def test_a_sweep_composes_each_job_once_and_runs_the_grid_hydra_would(tmp_path, monkeypatch, batch):
    composed = sweep_here(monkeypatch, tmp_path, *batch)
    jobs = json.loads((tmp_path / "sweep.json").read_text())["jobs"]
    assert [j["overrides"][-1] for j in jobs] == ["lr=0.2", "lr=0.1", "lr=0.01"]
    for job in jobs:
        assert json.loads((tmp_path / job["dir"] / "summary.json").read_text())["status"] == "completed"
    # Each job once, in one batch or in batches of 2 (Hydra's basic sweeper: twice, and our check
    # a third time).
    assert composed == {"lr=0.2": 1, "lr=0.1": 1, "lr=0.01": 1}


@pytest.mark.slow  # about 5 s: a whole sweep
def test_a_grid_given_as_hydra_sweeper_params_on_the_command_line_runs(tmp_path):
    # The basic sweeper's params default to None, into which OmegaConf cannot merge a dict: it
    # raised an AttributeError. The grid sweeper's are an empty dict.
    result = run_cli(
        "-m", *TINY, "trainer.epochs=1", '+hydra.sweeper.params={lr:"0.1,0.2"}', f"hydra.sweep.dir={tmp_path}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = json.loads((tmp_path / "sweep.json").read_text())["jobs"]
    assert [j["overrides"][0] for j in jobs] == ["lr=0.1", "lr=0.2"]  # params first, as Hydra puts them


def test_only_the_first_jobs_configs_are_held_for_the_launcher(tmp_path, monkeypatch):
    # A huge grid must not hold every composed config (about 240 kB each) until it is launched.
    from hydra.core.plugins import Plugins

    Plugins.instance()  # Hydra's plugin scan loads the module the sweep will use: patch that one
    monkeypatch.setattr(sys.modules["hydra_plugins.sweeper_grid.grid"], "KEEP", 2)
    composed = sweep_here(monkeypatch, tmp_path)
    assert composed == {"lr=0.2": 1, "lr=0.1": 1, "lr=0.01": 2}  # the third: checked, then launched


def test_hydras_basic_sweeper_still_checks_the_grid_first_and_summarises_it(tmp_path):
    bad = run_cli("-m", "hydra/sweeper=basic", *TINY, "lr=0.1,-1", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: job 1 (" + " ".join(TINY) + " lr=-1): lr=-1 is invalid: must be a number > 0"
    ]
    assert not (tmp_path / "outputs").exists()  # no job started
    good = run_cli(
        "-m",
        "hydra/sweeper=basic",
        *TINY,
        "trainer.epochs=1",
        "lr=0.1,0.2",
        f"hydra.sweep.dir={tmp_path / 's'}",
        cwd=tmp_path,
    )
    assert good.returncode == 0, good.stderr
    assert len(json.loads((tmp_path / "s" / "sweep.json").read_text())["jobs"]) == 2
    assert "2 jobs: 2 completed" in good.stdout


def sweep_experiments(monkeypatch, tmp_path, *overrides: str) -> list[list[str]]:
    """Run `-m experiment=lecture_lr,lecture_lr2` (tiny, fused) in this process; returns its jobs."""
    argv = ["sweeper", "-m", "experiment=lecture_lr,lecture_lr2", *TINY, "trainer.epochs=26",  # lr2 switches after 25
            "hydra/launcher=pool", "hydra.launcher.fuse=true", *overrides, f"hydra.sweep.dir={tmp_path}"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    from sweeper.__main__ import main

    GlobalHydra.instance().clear()
    main()
    GlobalHydra.instance().clear()
    return [j["overrides"] for j in json.loads((tmp_path / "sweep.json").read_text())["jobs"]]


def test_sweeping_experiments_runs_each_experiments_own_grid_fused_as_one_program(tmp_path, monkeypatch):
    # Hydra alone would run one job per experiment, at its default lr / lr2, dropping both grids.
    jobs = sweep_experiments(monkeypatch, tmp_path)
    assert [(job[0], job[-1]) for job in jobs] == [
        ("experiment=lecture_lr", "lr=0.2"),
        ("experiment=lecture_lr", "lr=0.1"),
        ("experiment=lecture_lr", "lr=0.01"),
        ("experiment=lecture_lr2", "schedule.lr2=0.07"),
        ("experiment=lecture_lr2", "schedule.lr2=0.05"),
        ("experiment=lecture_lr2", "schedule.lr2=0.02"),
    ]
    expected = [(0.2, "constant", True), (0.1, "constant", True), (0.01, "constant", True)] + [
        (0.1, "step", False)
    ] * 3
    for num, (lr, schedule, keep) in enumerate(expected):
        run = tmp_path / str(num)
        config = json.loads((run / "config.json").read_text())
        assert (config["lr"], config["schedule"]["name"], config["trainer"]["keep_sample_losses"]) == (
            lr,
            schedule,
            keep,
        )
        summary = json.loads((run / "summary.json").read_text())
        # The two experiments differ only in lr, schedule and what their records keep: one program.
        assert summary["status"] == "completed" and summary["fused_trials"] == 6
        assert (run / "sample_losses").exists() == keep  # lecture_lr keeps its raw per-sample losses


def test_the_command_line_wins_over_an_experiments_own_grid(tmp_path, monkeypatch):
    jobs = sweep_experiments(monkeypatch, tmp_path, "lr=0.05")
    # lecture_lr's lr grid gives way to the command line's lr; lecture_lr2 keeps its lr2 grid.
    assert [(job[0], job[-1]) for job in jobs] == [
        ("experiment=lecture_lr", "lr=0.05"),
        ("experiment=lecture_lr2", "schedule.lr2=0.07"),
        ("experiment=lecture_lr2", "schedule.lr2=0.05"),
        ("experiment=lecture_lr2", "schedule.lr2=0.02"),
    ]
    assert {json.loads((tmp_path / str(n) / "config.json").read_text())["lr"] for n in range(4)} == {0.05}


def test_hydras_basic_sweeper_refuses_an_experiments_grid_it_would_drop(tmp_path):
    done = run_cli(
        "-m",
        "hydra/sweeper=basic",
        "experiment=lecture_lr",
        *TINY,
        "lr=0.1",
        "experiment=lecture_lr,lecture_lr2",
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "its config sweeps schedule.lr2=0.07,0.05,0.02, which hydra/sweeper=basic does not expand; use the default hydra/sweeper=grid"
        )
    )
    assert not (tmp_path / "outputs").exists()


def test_a_grid_key_added_with_a_plus_is_the_key_the_job_sets():
    # `+trainer.foo: 1,2` in an experiment's params gives jobs `+trainer.foo=1`: nothing left to expand.
    from omegaconf import OmegaConf

    from sweeper.sweep import own_grid

    config = OmegaConf.create({"hydra": {"sweeper": {"params": {"+trainer.foo": "1,2", "lr": "0.1,0.2"}}}})
    assert own_grid(config, ["experiment=x", "+trainer.foo=1", "lr=0.1"]) == {}
    assert own_grid(config, ["experiment=x", "lr=0.1"]) == {"+trainer.foo": "1,2"}


@pytest.mark.slow  # about 5 s: a whole sweep
def test_hydras_basic_sweeper_composes_its_check_with_the_command_lines_hydra_overrides(tmp_path):
    # The grid removed on the command line is not refused as one the basic sweeper would drop.
    done = run_cli("-m", "hydra/sweeper=basic", "experiment=lecture_lr", "~hydra.sweeper.params.lr", *TINY,
                   "trainer.epochs=1", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(json.loads((tmp_path / "s" / "sweep.json").read_text())["jobs"]) == 1


def test_the_projects_check_is_its_apps_callback_and_raises_a_hydra_exception(tmp_path):
    # Before, the grid sweeper ran the project's checks on any app and exited (SystemExit(2)).
    from hydra.errors import CompactHydraException

    from hydra_plugins.sweeper_grid.grid import SweepRefused
    from sweeper.sweep import SweepCallback

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="config", overrides=[*TINY, "lr=-1", f"hydra.sweep.dir={tmp_path}"],
                      return_hydra_config=True)  # fmt: skip
    assert cfg.hydra.callbacks.sweep._target_ == "sweeper.sweep.SweepCallback"  # the app's, in conf/
    with pytest.raises(
        SweepRefused, match=r"^job 0 \(lr=-1\): lr=-1 is invalid: must be a number > 0$"
    ) as err:
        SweepCallback().check_grid(cfg, [(["lr=-1"], cfg)])
    assert isinstance(err.value, CompactHydraException)  # Hydra prints it in one line, no traceback
    assert not list(tmp_path.iterdir())

"""A user's own components through Hydra's own mechanisms: config groups found on the search path
(--config-dir, hydra.searchpath with file:// and pkg://, -cp/-cn) are as valid as the package's,
and a user's `_target_` has its keys bound to its signature, refused in one line before launch."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import open_dict

from sweeper import command_line, overrides, validate
from sweeper.command_line import config_source
from tests import test_slurm
from tests.conftest import CONF, TINY, compose_cfg, run_cli
from tests.slurm_helpers import read_json, sweep_cmd

MODULE = """
from torch import nn


class MLP(nn.Module):
    receptive_field_px = None  # the record's field; the run computes none for a plain MLP

    def __init__(self, in_channels, image_size, num_classes, hidden=32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_channels * image_size**2, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x):
        return self.net(x)


class TinyVGG(nn.Module):
    def __init__(self, a, b=1, c=2, num_classes=10):
        super().__init__()


def one_cycle(*, lr, steps_per_epoch, total_steps, peak=10.0):
    return lambda step: lr * peak * min(step, total_steps - step) / max(1, total_steps)
"""
cluster, fake_submitit = test_slurm.cluster, test_slurm.fake_submitit  # fixtures, shared
GROUPS = ("model", "optim", "schedule", "data", "loss")
SMALL = [a for a in TINY if not a.startswith("model.")]  # the user's model has no channels or units


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    """A user's project: mynets.py, and myconf/ with a model option `mlp` and an option `mine`
    in every other group."""
    (tmp_path / "mynets.py").write_text(MODULE)
    conf = tmp_path / "myconf"
    for group in GROUPS:
        (conf / group).mkdir(parents=True)
    # name and l1 are there for the training loop's record and penalty
    (conf / "model" / "mlp.yaml").write_text("_target_: mynets.MLP\nname: mlp\nhidden: 16\nl1: 0.0\n")
    (conf / "optim" / "mine.yaml").write_text("_target_: torch.optim.RMSprop\nname: rmsprop\nalpha: 0.9\n")
    (conf / "schedule" / "mine.yaml").write_text("_target_: mynets.one_cycle\npeak: 5.0\nwarmup_epochs: 0\n")
    (conf / "data" / "mine.yaml").write_text((CONF / "data" / "synthetic.yaml").read_text())
    (conf / "loss" / "mine.yaml").write_text("_target_: torch.nn.CrossEntropyLoss\nlabel_smoothing: 0.1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("mynets", None)
    return tmp_path


@pytest.mark.parametrize("search", [["--config-dir", "myconf"], ["hydra.searchpath=[file://{}/myconf]"]])
def test_an_option_of_a_config_dir_trains(project: Path, search: list[str]):
    # Before: "model.name='mlp' is invalid: allowed values are convnet, resnet".
    search = [a.format(project) for a in search]
    result = run_cli(*search, "model=mlp", *SMALL, "hydra.run.dir=run", cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.strip().endswith(f"completed: record in {project / 'run'}")
    assert (project / "run" / "summary.json").exists()


def test_a_target_that_cannot_be_imported_is_one_line_on_the_command_line(project: Path):
    result = run_cli("model._target_=mynets.Nope", *SMALL, cwd=project)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: model._target_=mynets.Nope is invalid: it cannot be imported "
        "(AttributeError: module 'mynets' has no attribute 'Nope')"
    ]


def test_a_typo_in_a_user_option_is_refused_naming_every_option(project: Path):
    result = run_cli("--config-dir", "myconf", "model=mlpp", *SMALL, cwd=project)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: model=mlpp is invalid: allowed values are convnet, mlp, resnet"
    ]


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_lists_the_options_on_the_search_path(project: Path, group: str):
    for source in (
        command_line.ConfigSource(str(CONF), extra_dir=str(project / "myconf")),
        command_line.ConfigSource(str(CONF)),
    ):
        search = [] if source.extra_dir else [f"hydra.searchpath=[file://{project / 'myconf'}]"]
        with pytest.raises(validate.ConfigError) as err:
            overrides.check_overrides([*search, f"{group}=minee"], source)
        assert str(err.value).startswith(f"{group}=minee is invalid: allowed values are ")
        mine = "mlp" if group == "model" else "mine"
        assert mine in str(err.value).rpartition("are ")[2].split(", ")


@pytest.mark.parametrize("group", ["optim", "schedule", "data", "loss"])
def test_an_option_on_the_search_path_is_accepted_and_checked(project: Path, group: str):
    search = f"hydra.searchpath=[file://{project / 'myconf'}]"
    chosen = "+" if group not in compose_cfg() else ""  # a group the primary config leaves out: +
    cfg = overrides.check_overrides([search, *SMALL, f"{chosen}{group}=mine"], str(CONF))
    validate.check(cfg)


def test_a_pkg_search_path_and_a_config_dir_given_by_cp_and_cn(project: Path):
    package = project / "userpkg"
    (package / "conf" / "model").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "conf" / "__init__.py").write_text("")
    (package / "conf" / "model" / "mlp.yaml").write_text((project / "myconf/model/mlp.yaml").read_text())
    cfg = overrides.check_overrides(["hydra.searchpath=[pkg://userpkg.conf]", "model=mlp"], str(CONF))
    assert cfg.model._target_ == "mynets.MLP"
    # A user's own primary config, which brings the project's on its search path.
    (project / "exp").mkdir()
    (project / "exp" / "exp.yaml").write_text(
        textwrap.dedent(f"""\
        defaults:
          - config
          - override model: mlp
          - _self_
        hydra:
          searchpath: [file://{CONF}, file://{project / "myconf"}]
        """)
    )
    source = config_source(["-cp", str(project / "exp"), "-cn", "exp", "model.hidden=8"])
    assert source == command_line.ConfigSource(str(project / "exp"), "exp")
    cfg = overrides.check_overrides(["model.hidden=8", *SMALL], source)
    assert cfg.model.hidden == 8 and cfg.model._target_ == "mynets.MLP"
    with pytest.raises(
        validate.ConfigError, match=r"^model=mlpp is invalid: allowed values are convnet, mlp"
    ):
        overrides.check_overrides(["model=mlpp"], source)
    pkg = config_source(["-cp", "pkg://userpkg.conf", "-cn", "exp", "-cd", "myconf"])
    assert pkg == command_line.ConfigSource("pkg://userpkg.conf", "exp", str(project / "myconf"))
    (package / "conf" / "exp.yaml").write_text((project / "exp" / "exp.yaml").read_text())
    with pytest.raises(
        validate.ConfigError, match=r"^model=mlpp is invalid: allowed values are convnet, mlp"
    ):
        overrides.check_overrides(["model=mlpp"], pkg)  # the primary config from a package


def test_the_checks_run_for_a_config_dir_that_does_not_exist(project: Path):
    with pytest.raises(validate.ConfigError, match="^--config-dir nope is invalid: .* is not a directory$"):
        config_source(["--config-dir", "nope"])


# ------------------------------------------------------------------ keys bound to the signature


def user_cfg(*overrides_: str):
    return compose_cfg(*[a for a in SMALL], *overrides_, tiny=False)


def test_a_users_model_with_the_convnets_keys_is_refused_in_one_line(project: Path):
    # Before: TypeError(... unexpected keyword argument 'conv_layers') in the job.
    with pytest.raises(validate.ConfigError) as err:
        validate.check(user_cfg("model._target_=mynets.TinyVGG"))
    assert str(err.value) == "model.conv_layers is not an argument of mynets.TinyVGG: it takes a, b, c"


def test_an_argument_without_default_must_be_given(project: Path):
    cfg = user_cfg("model._target_=mynets.TinyVGG")
    with open_dict(cfg):
        cfg.model = {"_target_": "mynets.TinyVGG", "b": 3}
    with pytest.raises(
        validate.ConfigError, match=r"^model\.a is missing: mynets.TinyVGG has no default for it"
    ):
        validate.check(cfg)
    with open_dict(cfg):
        cfg.model.a = 1
    validate.check(cfg)  # name is only a label: a user's option may leave it out


@pytest.mark.parametrize(
    "target, said",
    [
        (
            "nomodule.Net",
            "model._target_=nomodule.Net is invalid: it cannot be imported (ModuleNotFoundError: ",
        ),
        (
            "mynets.Nope",
            "model._target_=mynets.Nope is invalid: it cannot be imported "
            "(AttributeError: module 'mynets' has no attribute 'Nope')",
        ),
        (  # the project's own namespace too
            "sweeper.models.ConvNett",
            "model._target_=sweeper.models.ConvNett is invalid: it cannot be imported "
            "(AttributeError: module 'sweeper.models' has no attribute 'ConvNett')",
        ),
    ],
)
def test_a_target_that_cannot_be_imported_is_one_line(project: Path, target: str, said: str):
    with pytest.raises(validate.ConfigError) as err:
        validate.check(user_cfg(f"model._target_={target}"))
    assert str(err.value).startswith(said) and "\n" not in str(err.value)


def test_any_torch_optimizer_has_its_keys_checked(project: Path):
    with pytest.raises(validate.ConfigError) as err:
        validate.check(user_cfg("optim._target_=torch.optim.RMSprop"))
    assert str(err.value).startswith(
        "optim.nesterov is not an argument of torch.optim.RMSprop: it takes alpha, eps"
    )
    cfg = user_cfg("optim._target_=torch.optim.RMSprop", "~optim.nesterov", "~optim.name")  # name: a label
    validate.check(cfg)
    validate.check_device(cfg)  # the memory estimate too


def test_a_users_schedule_and_loss_have_their_keys_checked(project: Path):
    cfg = user_cfg()
    with open_dict(cfg):
        cfg.schedule = {"_target_": "mynets.one_cycle", "peek": 5.0}
        cfg.loss = {"_target_": "torch.nn.CrossEntropyLoss", "label_smoothing": 0.1}
    with pytest.raises(
        validate.ConfigError, match=r"^schedule\.peek is not an argument of mynets.one_cycle: it takes peak$"
    ):
        validate.check(cfg)
    cfg.schedule = {"_target_": "mynets.one_cycle", "peak": 5.0}
    validate.check(cfg)
    with open_dict(cfg):
        cfg.loss.smoothing = 0.1
    with pytest.raises(
        validate.ConfigError, match=r"^loss\.smoothing is not an argument of torch.nn.CrossEntropyLoss"
    ):
        validate.check(cfg)


def test_the_projects_own_options_keep_their_range_checks_under_another_name(project: Path):
    cfg = user_cfg("model.dropout=1.5")
    cfg.model.name = "my_convnet"  # a user's option naming the project's class: the same checks
    with pytest.raises(validate.ConfigError, match=r"^model\.dropout=1\.5 is invalid"):
        validate.check(cfg)


# ------------------------------------------------------------------ optimizing sweepers


@pytest.mark.parametrize("value", ["interval(0.01,0.2)", "tag(log,interval(0.01,0.2))"])
def test_interval_is_a_range_for_an_optimizing_sweeper_and_refused_in_a_grid(value: str):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    overrides.check_overrides(["-m", "hydra/sweeper=optuna", f"lr={value}"], str(CONF))
    with pytest.raises(validate.ConfigError) as err:
        overrides.check_overrides(["-m", f"lr={value}"], str(CONF))
    assert str(err.value).startswith(
        f"lr={value} is invalid: interval() is a range for an optimizing sweeper"
    )


# ------------------------------------------------------------------ jobs elsewhere


def test_a_slurm_job_imports_from_the_dir_the_sweep_was_launched_from(fake_submitit, project, monkeypatch):
    import cloudpickle

    test_slurm.launch("slurm_gpu", sweep_dir=project / "sweep", jobs=1)
    [(job, calls)] = fake_submitit.made[0].arrays
    job = cloudpickle.loads(cloudpickle.dumps(job))  # as the SLURM task unpickles it
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(project)])  # a task started elsewhere
    # upstream's call, which composes and runs the job, as seen from it: sys.path (Hydra's plugin
    # scan may have made a second BaseSubmititLauncher class, so take the job's own)
    base = next(c for c in type(job).__mro__ if c.__name__ == "BaseSubmititLauncher")
    monkeypatch.setattr(base, "__call__", lambda self, *call: list(sys.path))
    path = job(*calls[0])
    assert path[0] == str(project), path[:3]


@pytest.mark.slurm
def test_slurm_jobs_import_the_users_model_and_compose_with_its_config_dir(cluster, project):
    sweep_dir = project / "sweep"
    result = sweep_cmd(
        cluster, project, "--config-dir", "myconf", "hydra/launcher=submitit_slurm", "model=mlp",
        "model.hidden=8,16", *SMALL, f"hydra.sweep.dir={sweep_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 jobs: 2 completed" in result.stdout
    for n, hidden in enumerate((8, 16)):
        assert read_json(sweep_dir / str(n) / "summary.json")["status"] == "completed"
        assert read_json(sweep_dir / str(n) / "config.json")["model"]["_target_"] == "mynets.MLP"
        assert read_json(sweep_dir / str(n) / "config.json")["model"]["hidden"] == hidden


@pytest.fixture
def grid_project(project: Path) -> Path:
    """The project with a second model that has `hidden` too, and an experiment whose own grid
    sweeps the two (hydra.sweeper.params), as a user's experiment=... file does."""
    conf = project / "myconf"
    (conf / "model" / "mlp2.yaml").write_text("_target_: mynets.MLP\nname: mlp2\nhidden: 8\nl1: 0.0\n")
    (conf / "experiment").mkdir()
    (conf / "experiment" / "both.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    params:\n      model: mlp,mlp2\n"
    )
    return project


def test_a_key_of_every_model_an_experiments_grid_sweeps_is_told_to_take_plus_plus(grid_project: Path):
    # Hydra composes the sweep's shared config with the default model (convnet), which has no
    # `hidden`: the line says how to set it in every swept model, not "add model=mlp".
    source = command_line.ConfigSource(str(CONF), extra_dir=str(grid_project / "myconf"))
    with pytest.raises(validate.ConfigError) as err:
        overrides.check_overrides(["-m", "experiment=both", "model.hidden=4"], source)
    assert str(err.value) == (
        "model.hidden is invalid in this sweep: Hydra first composes the shared config with model=convnet, "
        "which has no hidden; write ++model.hidden to set it in every model swept"
    )
    with pytest.raises(validate.ConfigError) as err:  # a typo: the swept models' keys are the nearest
        overrides.check_overrides(["-m", "experiment=both", "model.hiden=4"], source)
    assert str(err.value) == "model.hiden is not a key of model: did you mean model.hidden?"
    overrides.check_overrides(["-m", "experiment=both", "++model.hidden=4", *SMALL], source)  # accepted


ANOTHER_APP = """
import sys

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf


@hydra.main(config_path=".", config_name="config", version_base=None)
def main(cfg):
    providers = sorted({s.provider for s in GlobalHydra.instance().config_loader().get_sources()})
    print(OmegaConf.to_container(cfg), providers, "trainer_schema.yaml" in ConfigStore.instance().repo)


main()
"""


def test_another_hydra_app_gets_the_trainer_schema_registered_but_composes_only_its_own_config(tmp_path):
    """The search-path plugin runs in any Hydra app of this environment: it registers the trainer's
    schema there too, which nothing composes unless a defaults list names it, and adds no config dir."""
    (tmp_path / "config.yaml").write_text("foo: 1\n")
    (tmp_path / "another_app.py").write_text(ANOTHER_APP)
    quiet = ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    result = run_cli(f"hydra.run.dir={tmp_path / 'out'}", *quiet, cwd=tmp_path, module="another_app")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{'foo': 1} ['hydra', 'main', 'schema'] True"

"""Composition of every config option, and refusal of invalid values with one line, before training."""

import shutil
from pathlib import Path

import pytest

from sweeper import launcher_options, overrides, validate
from tests.conftest import CONF, REPO, TINY, compose_cfg, run_cli

GROUP_OPTIONS = [
    (g.name, f.stem)
    for g in sorted(CONF.iterdir())
    if g.is_dir() and g.name not in ("hydra", "experiment")
    for f in sorted(g.glob("*.yaml"))
]
EXPERIMENTS = sorted(f.stem for f in (CONF / "experiment").glob("*.yaml"))


def test_defaults_are_the_lecture_protocol():
    cfg = compose_cfg(tiny=False)
    assert (cfg.model.name, cfg.optim.name, cfg.schedule.name, cfg.data.name) == (
        "convnet",
        "sgd",
        "constant",
        "cifar10",
    )
    assert cfg.lr == 0.1 and cfg.trainer.epochs == 50 and cfg.trainer.batch_size == 100
    assert (cfg.optim.momentum, cfg.optim.weight_decay) == (0.0, 0.0)  # plain SGD
    assert list(cfg.trainer.sample_loss_epochs) == [*range(1, 11), *range(15, 51, 5)]
    assert cfg.trainer.threads == "auto"  # the threads the process was given


@pytest.mark.parametrize("threads", ["auto", 1, 3])
def test_a_thread_count_of_auto_or_a_whole_number_is_accepted(threads):
    validate.check(compose_cfg(f"trainer.threads={threads}"))


@pytest.mark.parametrize("group, option", GROUP_OPTIONS)
def test_every_group_option_composes_and_validates(group, option, tmp_path):
    extra = []
    if option == "image_folder":  # the one option with no default place: a tree of its own
        from tests.test_datasets import write_tree

        write_tree(tmp_path, ["a", "b"], (32, 32), "L", per_class=(25, 1))
        extra = [f"data.root={tmp_path}"]
    cfg = compose_cfg(f"{group}={option}", "trainer.epochs=50", *extra)
    assert group == "trainer" or cfg[group].name == option
    validate.check(cfg)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_validates(name):
    cfg = compose_cfg(f"experiment={name}", tiny=False)
    validate.check(cfg)


def test_experiments_hold_the_lecture_protocols():
    lr2 = compose_cfg("experiment=lecture_lr2", tiny=False)
    assert (lr2.schedule.name, lr2.lr, lr2.schedule.switch_epoch, lr2.trainer.epochs) == ("step", 0.1, 25, 50)
    text = (CONF / "experiment" / "lecture_lr2.yaml").read_text()
    assert "schedule.lr2: 0.07,0.05,0.02" in text
    assert "lr: 0.2,0.1,0.01" in (CONF / "experiment" / "lecture_lr.yaml").read_text()
    assert compose_cfg("experiment=lecture_overfit_subset", tiny=False).data.train_size == 1000


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["lr=-0.1"], "lr=-0.1 is invalid: must be a number > 0"),
        (["lr=abc"], "lr='abc' is invalid: must be a number > 0"),
        (
            ["schedule=step", "schedule.switch_epoch=2"],
            "schedule.switch_epoch=2 is invalid: the switch to schedule.lr2 must come before the end",
        ),
        (["schedule=multistep", "schedule.milestones=[3,1]"], "schedule.milestones=[3, 1] is invalid"),
        (
            ["schedule=geometric", "schedule.gamma=1.5"],
            "schedule.gamma=1.5 is invalid: must be a number > 0 and <= 1",
        ),
        (["model.kernel_size=40"], "model.kernel_size=40 at conv layer 1 is larger than its 32x32 input"),
        (  # padding=same keeps the map; past 2*size - 1 the kernel's outer weights meet no pixel
            ["model.padding=same", "model.kernel_size=[5,21]"],
            "model.kernel_size=21 at conv layer 2 is wider than its 10x10 input can use with "
            "model.padding=same (at most 19",
        ),
        (
            ["trainer.seed=18446744073709551616"],  # torch.manual_seed's range ends at 2**64 - 1
            "trainer.seed=18446744073709551616 is invalid: must be an integer >= 0 and <= 18446744073709551615",
        ),
        (["model.conv_layers=3"], "model.pool has 2 entries but model.conv_layers=3"),
        (["model.padding=full"], "model.padding='full' is invalid: allowed values are valid, same"),
        (["model.dropout=1.0"], "model.dropout=1.0 is invalid: must be a number >= 0 and < 1"),
        (["data.train_size=100000"], "data.train_size=100000 is invalid: must be an integer >= 1 and <= 300"),
        (
            ["data=cifar10", "data.root=/no/such/dir", "data.download=false"],
            "data.root=/no/such/dir is invalid: no CIFAR-10 there",
        ),
        (["optim.momentum=1.5"], "optim.momentum=1.5 is invalid: must be a number >= 0 and < 1"),
        (["optim.nesterov=true"], "optim.nesterov=true is invalid with optim.momentum=0"),
        (["trainer.precision=fp16"], "trainer.precision='fp16' is invalid: allowed values are fp32, bf16"),
        (
            ["trainer.device=tpu"],
            "trainer.device='tpu' is invalid: allowed values are auto, cpu, cuda, cuda:N, mps",
        ),
        (["trainer.batch_size=0"], "trainer.batch_size=0 is invalid: must be an integer >= 1 and <= 300"),
        # 1 and 0 equal True and False in Python, but are not the knob's values
        (
            ["trainer.channels_last=1"],
            "trainer.channels_last=1 is invalid: allowed values are auto, true, false",
        ),
        (["trainer.threads=0"], "trainer.threads=0 is invalid: must be auto or an integer >= 1"),
        (["trainer.threads=true"], "trainer.threads=true is invalid: must be auto or an integer >= 1"),
        (["trainer.threads=1.5"], "trainer.threads=1.5 is invalid: must be auto or an integer >= 1"),
        (["trainer.threads=all"], "trainer.threads='all' is invalid: must be auto or an integer >= 1"),
    ],
)
def test_invalid_values_are_refused_naming_key_and_allowed_values(overrides, message):
    with pytest.raises(validate.ConfigError) as err:
        validate.check(compose_cfg(*overrides))
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "argument, message",
    [
        (
            "schedule=foo",
            "schedule=foo is invalid: allowed values are constant, cosine, geometric, lr_range, multistep, step",
        ),
        ("trainer.epoch=3", "trainer.epoch is not a key of trainer: did you mean trainer.epochs?"),
        ("modle.channels=8", "modle.channels is not a key of the config: did you mean model.channels?"),
    ],
)
def test_unknown_options_and_keys_are_refused_in_one_line(argument, message):
    with pytest.raises(validate.ConfigError, match=message.replace("?", r"\?")):
        overrides.check_overrides([argument], str(CONF))


@pytest.mark.parametrize(
    "argument", ["schedule=glob(c*)", "schedule=choice(step,cosine)", "schedule=step,cosine", "model=convnet"]
)
def test_hydras_sweep_syntax_over_a_group_passes_the_option_check(argument):
    overrides.check_overrides(["-m", argument], str(CONF))


@pytest.mark.parametrize(
    "argument, message",
    [
        (
            "schedule=choice(step,cosne)",
            "schedule=cosne is invalid: allowed values are constant, cosine, geometric, lr_range, multistep, step",
        ),
        (
            "schedule=glob(z*)",
            "schedule=glob(z*) is invalid: it matches none of constant, cosine, geometric, lr_range, multistep, step",
        ),
    ],
)
def test_hydras_sweep_syntax_over_a_group_is_checked_value_by_value(argument, message):
    with pytest.raises(validate.ConfigError) as err:
        overrides.check_overrides(["-m", argument], str(CONF))
    assert str(err.value) == message


def test_a_key_added_to_the_grid_sweeper_that_its_class_does_not_take_is_refused_in_one_line():
    # Hydra instantiates the sweeper with it and fails in a TypeError over several lines.
    with pytest.raises(validate.ConfigError) as err:
        overrides.check_overrides(["-m", "+hydra.sweeper.batch=2", "lr=0.1,0.2"], str(CONF))
    assert str(err.value) == (
        "hydra.sweeper.batch is not an argument of hydra_plugins.sweeper_grid.grid.GridSweeper: "
        "it takes max_batch_size, params"
    )


def test_cli_refuses_a_bad_value_with_one_line_and_no_run(tmp_path: Path):
    result = run_cli(*TINY, "lr=-1", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: lr=-1 is invalid: must be a number > 0"
    assert "Traceback" not in result.stderr + result.stdout
    assert not list(tmp_path.glob("outputs/runs/*/*/metrics.jsonl"))


def test_cli_refuses_a_bad_grid_before_its_first_job(tmp_path: Path):
    result = run_cli("-m", *TINY, "lr=0.1,-1", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: job 1 (" + " ".join(TINY) + " lr=-1): lr=-1 is invalid: must be a number > 0"
    ]
    assert not (tmp_path / "outputs").exists()  # no job started, not even the valid one


def test_cli_refuses_an_unknown_option_in_one_line(tmp_path: Path):
    result = run_cli("-m", "schedule=step,cosne", cwd=tmp_path)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "error: schedule=cosne is invalid: allowed values are constant, cosine, geometric, lr_range, multistep, step"
    )


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            ["hydra/launcher=bogus"],
            "hydra/launcher=bogus is invalid: allowed values are basic, pool, slurm_gpu, slurm_gpu_packed, "
            "submitit_local, submitit_slurm, sweeper_local, sweeper_slurm",
        ),
        (  # the launcher's own check, which Hydra would wrap in three lines of instantiation error
            ["hydra/launcher=pool", "hydra.launcher.slots_per_device=0"],
            "hydra.launcher.slots_per_device=0 is invalid: must be >= 1",
        ),
        (
            ["hydra/launcher=pool", "hydra.launcher.devices=[gpu0]"],
            "hydra.launcher.devices=['gpu0'] is invalid: allowed values are [auto], [cpu] or GPU indices",
        ),
        (  # a sweep of a launcher key, or of launchers, is not what was meant
            ["hydra/launcher=pool", "hydra.launcher.devices=0,1"],
            "hydra.launcher.devices=0,1 is invalid: a launcher key takes one value; quote a string with "
            "commas ('0,1') or write a list ([0,1])",
        ),
        (
            ["hydra/launcher=pool,bogus"],
            "hydra/launcher=pool,bogus is invalid: a sweep runs on one launcher, so pick one of them",
        ),
        (["hydra/launcher=pool", "hydra.launcher.devices=null"], "hydra.launcher.devices=None is invalid"),
        (  # Hydra's forced add still reaches the launcher's own check
            ["hydra/launcher=pool", "++hydra.launcher.slots_per_device=0"],
            "hydra.launcher.slots_per_device=0 is invalid: must be >= 1",
        ),
        (
            ["hydra/launcher=pool", "+hydra.launcher.slot=2"],
            "hydra.launcher.slot is not a key of hydra/launcher=pool: its keys are devices, fuse, slots_per_device",
        ),
        (
            ["hydra.launcher.n_jobs=2"],
            "hydra.launcher.n_jobs is not a key of hydra/launcher=basic: it has none",
        ),
        (  # an interpolation the user gave must resolve
            ["hydra/launcher=pool", "hydra.launcher.slots_per_device=${oc.env:SWEEPER_TEST_UNSET_VARIABLE}"],
            "hydra.launcher.slots_per_device=${oc.env:SWEEPER_TEST_UNSET_VARIABLE} is invalid: KeyError raised "
            "while resolving interpolation: \"Environment variable 'SWEEPER_TEST_UNSET_VARIABLE' not found\"",
        ),
        (
            ["hydra/launcher=pool", "hydra.launcher._target_=foo.Bar"],
            "hydra.launcher._target_=foo.Bar is invalid: No module named 'foo'",
        ),
        (  # a new sbatch option inside a dict value also needs the +
            ["hydra/launcher=slurm_gpu", "hydra.launcher.additional_parameters={mail_type:END}"],
            "hydra.launcher.additional_parameters={mail_type:END} is invalid: Key 'mail_type' is not in struct; "
            "a new key takes Hydra's +",
        ),
        (
            ["hydra/launcher=pool", "hydra.launcher.fuse=maybe"],
            "hydra.launcher.fuse=maybe is invalid: allowed values are true and false",
        ),
        (  # OmegaConf took these as true
            ["hydra/launcher=pool", "hydra.launcher.fuse=2"],
            "hydra.launcher.fuse=2 is invalid: allowed values are true and false",
        ),
        (
            ["hydra/launcher=pool", "hydra.launcher.fuse=yes"],
            "hydra.launcher.fuse=yes is invalid: allowed values are true and false",
        ),
        (  # ++ on a key the launcher has sets it as a plain override does
            ["hydra/launcher=pool", "++hydra.launcher.fuse=2"],
            "++hydra.launcher.fuse=2 is invalid: allowed values are true and false",
        ),
        (  # OmegaConf: "Value '1.5' of type 'float' could not be converted to Integer"
            ["hydra/launcher=pool", "hydra.launcher.slots_per_device=1.5"],
            "hydra.launcher.slots_per_device=1.5 is invalid: must be a whole number (an integer such as 1)",
        ),
        (
            ["hydra/launcher=pool", "hydra.launcher.slots_per_device=null"],
            "hydra.launcher.slots_per_device=null is invalid: this key must be set: null is not allowed",
        ),
        (  # OmegaConf: "Cannot merge DictConfig with ListConfig"
            ["hydra/launcher=pool", "hydra.launcher.devices={a:1}"],
            "hydra.launcher.devices={a:1} is invalid: must be a list, such as [auto]",
        ),
        (
            ["hydra/launcher=pool", "hydra.launcher.slot=2"],
            "hydra.launcher.slot is not a key of hydra/launcher=pool: its keys are devices, fuse, slots_per_device",
        ),
        (  # a key of our submitit launchers given to hydra-submitit-launcher's own
            ["hydra/launcher=submitit_local", "hydra.launcher.jobs_per_task=2"],
            "hydra.launcher.jobs_per_task is not a key of hydra/launcher=submitit_local: the launchers with it "
            "are slurm_gpu, slurm_gpu_packed, sweeper_local, sweeper_slurm",
        ),
        (  # Hydra refuses a new sbatch option without its +
            ["hydra/launcher=slurm_gpu", "hydra.launcher.additional_parameters.mail-type=END"],
            "hydra.launcher.additional_parameters.mail-type is not a key of hydra/launcher=slurm_gpu: append it "
            "with +hydra.launcher.additional_parameters.mail-type=END",
        ),
        (  # sbatch would refuse it only once the sweep had started submitting
            ["hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=-5"],
            "hydra.launcher.timeout_min=-5 is invalid: must be an integer >= 0",
        ),
        (
            ["hydra/launcher=slurm_gpu", "hydra.launcher.gpus_per_node=-1"],
            "hydra.launcher.gpus_per_node=-1 is invalid: must be an integer >= 0",
        ),
        (
            ["hydra/launcher=slurm_gpu", "hydra.launcher.cpus_per_task=0"],
            "hydra.launcher.cpus_per_task=0 is invalid: must be an integer >= 1",
        ),
        (
            ["hydra/launcher=slurm_gpu_packed", "hydra.launcher.jobs_per_task=0"],
            "hydra.launcher.jobs_per_task=0 is invalid: must be an integer >= 1",
        ),
        (  # every job would wait in the queue, then be refused on its node
            ["hydra/launcher=submitit_slurm", "trainer.device=cuda"],
            "trainer.device=cuda needs a GPU, but hydra/launcher=submitit_slurm asks SLURM for none "
            "(hydra.launcher.gpus_per_node=null): use hydra/launcher=slurm_gpu, or set hydra.launcher.gpus_per_node=1",
        ),
        (  # SLURM's signal, 120 s before a 1 min limit: submitit took the job as timed out at once
            ["hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=1"],
            "hydra.launcher.timeout_min=1 is invalid with hydra.launcher.signal_delay_s=120: the time-limit "
            "signal would come at the start; give more than 2 min, or a smaller signal_delay_s",
        ),
    ],
)
def test_bad_launcher_options_keys_and_values_are_refused_in_one_line(arguments, message):
    with pytest.raises(validate.ConfigError) as err:
        launcher_options.check_launcher(["-m", "experiment=demo", *arguments], str(CONF))
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_good_launcher_values_pass_the_launcher_check(monkeypatch):
    launcher_options.check_launcher(  # each launcher is built, as Hydra will build it: no error, nothing started
        ["-m", "hydra/launcher=pool", "hydra.launcher.devices=[cpu]", "hydra.launcher.slots_per_device=2"],
        str(CONF),
    )
    launcher_options.check_launcher(  # quoted, as OmegaConf converts them: accepted before the type check came
        ["-m", "hydra/launcher=pool", 'hydra.launcher.slots_per_device="2"', 'hydra.launcher.fuse="true"',
         "++hydra.launcher.fuse=false"],
        str(CONF),
    )  # fmt: skip
    launcher_options.check_launcher(  # the overrides docs/slurm.md shows
        [
            "-m",
            "hydra/launcher=slurm_gpu_packed",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.jobs_per_task=2",
            "+hydra.launcher.additional_parameters.mail-type=END",
            'hydra.launcher.setup=["module load cuda/12.4","export OMP_NUM_THREADS=8"]',
            "hydra.launcher.timeout_min=60",
        ],
        str(CONF),
    )
    launcher_options.check_launcher(  # a GPU asked through an sbatch option is a GPU for trainer.device=cuda
        [
            "-m",
            "hydra/launcher=submitit_slurm",
            "trainer.device=cuda",
            "+hydra.launcher.additional_parameters={gpus:1}",
        ],
        str(CONF),
    )
    launcher_options.check_launcher(["-m", "lr=0.1,0.2"], str(CONF))  # the default (basic) launcher
    monkeypatch.setenv("SWEEPER_TEST_SLOTS", "2")
    launcher_options.check_launcher(  # what Hydra would accept: resolved interpolations, escaped commas
        [
            "-m",
            "hydra/launcher=pool",
            "hydra.launcher.slots_per_device=${oc.env:SWEEPER_TEST_SLOTS}",
            "hydra.launcher.devices=cpu",
        ],
        str(CONF),
    )
    launcher_options.check_launcher(  # an interpolation of another override; another launcher class
        [
            "-m",
            "+minutes=2",
            "hydra/launcher=pool",
            "hydra.launcher.slots_per_device=${minutes}",
            "hydra.launcher._target_=hydra_plugins.sweeper_pool.launcher.PoolLauncher",
        ],
        str(CONF),
    )
    launcher_options.check_launcher(  # sbatch's 0s: no time limit, all of a node's memory
        ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=0", "hydra.launcher.mem_gb=0"],
        str(CONF),
    )
    launcher_options.check_launcher(
        [
            "-m",
            "hydra/launcher=submitit_slurm",
            "hydra.launcher.timeout_min=${oc.env:SWEEPER_TEST_UNSET_VARIABLE,60}",
            r"hydra.launcher.comment=a\,b",
            "hydra.launcher.exclude='n1,n2'",
        ],
        str(CONF),
    )


def test_cli_refuses_a_bad_launcher_value_in_one_line_before_any_job(tmp_path: Path):
    result = run_cli(
        "-m", *TINY, "lr=0.1,0.2", "hydra/launcher=pool", "hydra.launcher.slots_per_device=0", cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: hydra.launcher.slots_per_device=0 is invalid: must be >= 1"
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow  # about 5 s: a whole sweep
def test_every_way_of_asking_for_a_sweep_gets_the_launcher_check(tmp_path: Path):
    # argparse takes --multi for --multirun; hydra.mode=MULTIRUN may come with + or ++
    for how in (["--multi"], ["++hydra.mode=MULTIRUN"]):
        result = run_cli(
            *how, *TINY, "hydra/launcher=pool", "hydra.launcher.slots_per_device=0", cwd=tmp_path
        )
        assert result.returncode == 2, how
        assert result.stderr.strip() == "error: hydra.launcher.slots_per_device=0 is invalid: must be >= 1", (
            how
        )


def test_a_sweep_with_cfg_is_one_line_not_hydras_traceback(tmp_path: Path):
    result = run_cli("-m", "lr=0.1,0.2", "--cfg", "job", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (
        2,
        "error: -m/--multirun and -c/--cfg cannot go together: Hydra does one of --multirun, --cfg, --info "
        "and --shell-completion at a time (drop -m to print a sweep's config)\n",
    )


def test_the_launcher_check_stands_aside_where_hydra_launches_nothing_or_searches_another_dir(tmp_path: Path):
    completion = run_cli("-sc", "install=bash", cwd=tmp_path)  # Hydra's shell completion: no override
    assert completion.returncode == 0 and "error:" not in completion.stderr, completion.stderr
    printed = run_cli(
        "--cfg",
        "hydra",
        "-p",
        "hydra.launcher",
        "hydra/launcher=pool",
        "hydra.launcher.fuse=maybe",
        cwd=tmp_path,
    )
    assert "error:" not in printed.stderr  # Hydra's own message, if any: it prints, launches nothing
    extra = tmp_path / "extra" / "hydra" / "launcher"
    extra.mkdir(parents=True)
    (extra / "mine.yaml").write_text("defaults:\n  - pool\n")  # a launcher option conf/ does not have
    result = run_cli(
        "--config-dir", str(tmp_path / "extra"), "-m", *TINY, "hydra/launcher=mine", f"hydra.sweep.dir={tmp_path / 's'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 job: 1 completed" in result.stdout + result.stderr


def test_an_experiment_that_is_a_grid_is_refused_as_a_single_run_unless_its_values_are_picked(tmp_path: Path):
    from sweeper.__main__ import check_run

    with pytest.raises(validate.ConfigError) as err:
        check_run(["experiment=lecture_lr", *TINY, f"hydra.run.dir={tmp_path / 'r'}"])
    assert str(err.value) == (
        "experiment=lecture_lr is a grid (lr=0.2,0.1,0.01): add -m to run its jobs, or set lr for one run"
    )
    check_run(
        ["experiment=lecture_lr", "lr=0.1", *TINY, f"hydra.run.dir={tmp_path / 'r'}"]
    )  # one of its runs
    check_run([*TINY, f"hydra.run.dir={tmp_path / 'r'}"])  # the default config has no grid
    assert not (tmp_path / "r").exists()


def test_a_config_named_with_cp_and_cn_is_checked_before_anything_is_written(tmp_path: Path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "config.yaml").rename(conf / "mine.yaml")
    run_dir = tmp_path / "run"
    bad = run_cli("-cp", str(conf), "-cn", "mine", *TINY, "lr=-1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert (bad.returncode, bad.stderr) == (2, "error: lr=-1 is invalid: must be a number > 0\n")
    assert not run_dir.exists()  # refused before Hydra made the run dir
    unnamed = run_cli("-cp", str(conf), *TINY, cwd=tmp_path)
    assert (unnamed.returncode, unnamed.stderr) == (
        2, f"error: --config-name is needed: {conf} has no config.yaml (its configs: mine)\n"
    )  # fmt: skip
    nowhere = run_cli("--config-path=nope", *TINY, cwd=tmp_path)  # relative to sweeper/, as Hydra reads it
    assert (nowhere.returncode, nowhere.stderr) == (
        2, f"error: --config-path nope is invalid: {REPO / 'sweeper' / 'nope'} is not a directory\n"
    )  # fmt: skip
    ok = run_cli("-cp", str(conf), "--config-name=mine", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (run_dir / "summary.json").exists() and (run_dir / ".hydra" / "config.yaml").exists()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (  # Hydra's master config has the default optim=sgd, which has no eps
            ["-m", "optim=adam,adamw", "optim.eps=1e-7"],
            "optim.eps=1e-7 is invalid in this sweep: Hydra first composes the shared config with optim=sgd, "
            "which has no eps; write ++optim.eps=1e-7 to set it in every optim swept",
        ),
        (
            ["-m", "model=resnet,convnet", "model.blocks=2"],
            "model.blocks=2 is invalid in this sweep: model=convnet has no blocks (only model=resnet has); "
            "sweep them separately",
        ),
        (
            ["model.channels=16,32"],
            "model.channels=16,32 is a sweep over several values: add -m to run a job per value "
            "(a list is [16,32], a string with commas '16,32')",
        ),
        (
            ["-m", "lr=interval(0.1,0.2)"],
            "lr=interval(0.1,0.2) is invalid: interval() is a range for an optimizing sweeper; a grid takes "
            "values (a,b,c), range(start,stop,step) or choice(a,b)",
        ),
        (
            ["-m", "hydra.sweep.dir=/tmp/s", "hydra.sweep.dirr=x", "lr=0.1,0.2"],
            "hydra.sweep.dirr is not a key of hydra.sweep: did you mean hydra.sweep.dir?",
        ),
        (
            ["-m", "hydra/sweeper=basicc", "lr=0.1,0.2"],
            "hydra/sweeper=basicc is invalid: allowed values are basic, grid",
        ),
        (  # the grid sweeper's params are there, empty: a dict of new keys for them takes +
            ["-m", 'hydra.sweeper.params={lr:"0.1,0.2"}'],
            'hydra.sweeper.params={lr:"0.1,0.2"} is invalid: it adds keys to hydra.sweeper.params, '
            'which takes Hydra\'s +: +hydra.sweeper.params={lr:"0.1,0.2"}',
        ),
        (  # Hydra's basic sweeper's params are None, which a dict cannot merge into (a traceback)
            ["-m", "hydra/sweeper=basic", '+hydra.sweeper.params={lr:"0.1,0.2"}'],
            '+hydra.sweeper.params={lr:"0.1,0.2"} is invalid: OmegaConf cannot merge it',
        ),
        (["lr=${nope.key}"], "lr=${nope.key} is invalid: Interpolation key 'nope.key' not found"),
        (  # the same refusal whichever option comes first (the first was "did you mean optim.name?")
            ["-m", "optim=sgd,adam", "optim.eps=1e-7"],
            "optim.eps is invalid in this sweep: optim=sgd has no eps (only optim=adam has); sweep them separately",
        ),
        (
            ["-m", "experiment=lecture_lr,lecture_lr2", "schedule.switch_epoch=1"],
            "schedule.switch_epoch is invalid in this sweep: experiment=lecture_lr has no schedule.switch_epoch "
            "(only experiment=lecture_lr2 has); sweep them separately",
        ),
        (  # the lecture's lr2 protocol without its schedule: was "did you mean schedule.warmup_epochs?"
            ["-m", "schedule.switch_epoch=25", "schedule.lr2=0.07,0.05"],
            "schedule.switch_epoch is invalid: schedule=constant has no switch_epoch; the schedule options with it are step "
            "(add schedule=step)",
        ),
        (["schedule.lrr2=0.1"], "schedule.lrr2 is not a key of schedule: its keys are name,"),
        (["modle.channels=3"], "modle.channels is not a key of the config: did you mean model.channels?"),
        (  # ++ sets or adds; under a section nothing reads a new key, or a job's builder fails on it
            ["++trainer.foo=1"],
            "++trainer.foo=1 is invalid: nothing reads a new key under trainer, whose keys are epochs,",
        ),
        (
            ["-m", "optim=sgd,adam", "++optim.eps=1e-7"],
            "++optim.eps=1e-7 is invalid in this sweep: optim=sgd has no eps (only optim=adam has); "
            "sweep them separately",
        ),
        (
            ["-m", "hydra.sweeep.dir=x", "lr=0.1,0.2"],
            "hydra.sweeep.dir is not a key: hydra has no sweeep; did you mean hydra.sweep.dir?",
        ),
        (
            ["-m", "+hydra.sweeep.dir=x", "lr=0.1,0.2"],
            "+hydra.sweeep.dir=x is invalid: hydra has no sweeep; did you mean hydra.sweep.dir?",
        ),
        (["+lrr=1"], "+lrr is invalid: did you mean lr? (+ adds a new key)"),
        (["+lr=0.3"], "+lr is invalid: lr is a key already; set it without +"),
        (
            ["+trainer.foo=1"],
            "+trainer.foo is invalid: nothing reads a new key under trainer, whose keys are epochs, batch_size",
        ),
    ],
)
def test_commands_hydra_would_refuse_over_many_lines_are_refused_in_one(arguments, message):
    with pytest.raises(validate.ConfigError) as err:
        overrides.check_overrides(arguments, str(CONF))
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "arguments",
    [
        ["-m", "optim=adam,adamw", "++optim.eps=1e-7"],  # what the refusal above advises
        ["+tag=baseline"],  # a new top-level key: a label the analysis shows as a column
        ["-m", "lr=0.1,0.2", "model.channels=[16,32]"],
        ["experiment=lecture_lr2", "-m"],
    ],
)
def test_valid_commands_pass_the_command_check(arguments):
    overrides.check_overrides(arguments, str(CONF))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["model=resnet", "model.kernel_size=4"],
            "model.kernel_size=4 is invalid for model=resnet: must be odd (1, 3, 5, ...)",
        ),
        (["lr=${oc.env:SWEEPER_TEST_UNSET_VAR}"], "lr=${oc.env:SWEEPER_TEST_UNSET_VAR} is invalid: "),
        (
            ["lr=${oc.env:SWEEPER_TEST_UNSET_VAR,0.05}"],
            "lr='0.05' is invalid: must be a number > 0 (a string: ${oc.env:...} gives strings, "
            "${oc.decode:${oc.env:...}} numbers)",
        ),
        (["model.channels=0"], "model.channels=0 is invalid: must be >= 1"),
        (["model.channels=[16,0]"], "model.channels=[16,0] is invalid: every entry must be >= 1"),
        (
            ["schedule=multistep", "schedule.milestones=[]"],
            "schedule.milestones=[] is invalid: must be a list of integers, not empty (e.g. [",
        ),
    ],
)
def test_values_that_failed_inside_the_job_are_refused_before_it(overrides, message):
    with pytest.raises(validate.ConfigError) as err:
        validate.check(compose_cfg(*overrides))
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "device, gpus, message",
    [
        ("cuda", 0, "trainer.device=cuda is invalid here: this machine has no CUDA GPU"),
        (
            "cuda:1",
            1,
            "trainer.device=cuda:1 is invalid here: this machine has 1 CUDA GPU(s), cuda:0 to cuda:0",
        ),
        ("cuda:0", 1, None),
        ("cpu", 0, None),
        ("auto", 0, None),
    ],
)
def test_a_device_this_machine_lacks_is_refused_in_one_line(device, gpus, message, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    cfg = compose_cfg(f"trainer.device={device}")
    if message is None:
        validate.check_device(cfg)
    else:
        with pytest.raises(validate.ConfigError) as err:
            validate.check_device(cfg)
        assert str(err.value).startswith(message)


def test_a_cuda_index_must_be_a_number():
    with pytest.raises(
        validate.ConfigError, match=r"trainer.device='cuda:abc' is invalid: allowed values are"
    ):
        validate.check(compose_cfg("trainer.device=cuda:abc"))


@pytest.mark.slow  # about 5 s: a whole sweep
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_a_local_sweep_or_run_on_a_gpu_this_machine_lacks_is_refused_before_it_starts(tmp_path: Path):
    sweep = run_cli(
        "-m", *TINY, "trainer.device=cuda", "lr=0.1,0.2", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path
    )
    assert sweep.returncode == 2
    last = sweep.stderr.strip().splitlines()[-1]
    assert last.startswith("error: job 0 (") and last.endswith(
        "trainer.device=cuda is invalid here: this machine has no CUDA GPU (torch.cuda.is_available() is false); "
        "use auto or cpu"
    )
    assert not list((tmp_path / "s").glob("*/config.json"))  # no job started
    single = run_cli(*TINY, "trainer.device=cuda", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert single.returncode == 2 and "Traceback" not in single.stderr
    assert single.stderr.strip().endswith(
        "this machine has no CUDA GPU (torch.cuda.is_available() is false); use auto or cpu"
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_a_cuda_graph_asked_for_where_no_cuda_trains_is_refused(device, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # Before, the run completed without a graph and said nothing.
    with pytest.raises(
        validate.ConfigError, match=r"^trainer.cuda_graph=true is invalid here: this run trains on cpu"
    ):
        validate.check_device(compose_cfg(f"trainer.device={device}", "trainer.cuda_graph=true"))
    validate.check_device(compose_cfg(f"trainer.device={device}", "trainer.cuda_graph=auto"))


@pytest.mark.slow  # about 5 s: a whole sweep
def test_a_flag_after_the_overrides_still_runs_the_sweep(tmp_path: Path):
    # Hydra reads overrides as one run of words; the pending .hydra override must join that run.
    result = run_cli(*TINY, "lr=0.1,0.2", f"hydra.sweep.dir={tmp_path / 's'}", "-m", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for n in (0, 1):
        assert (tmp_path / "s" / str(n) / "summary.json").exists()
        assert (tmp_path / "s" / str(n) / ".hydra" / "config.yaml").exists()
        assert not list((tmp_path / "s" / str(n)).glob(".hydra.pending-*"))
        # Hydra's records read as if it had written .hydra/ in place: replaying them writes no pending dir
        assert ".hydra.pending-" not in (tmp_path / "s" / str(n) / ".hydra" / "hydra.yaml").read_text()
    assert ".hydra.pending-" not in (tmp_path / "s" / "multirun.yaml").read_text()


def test_a_single_run_deleting_a_key_it_needs_is_refused_before_its_dir_is_made(tmp_path: Path):
    result = run_cli(*TINY, f"hydra.run.dir={tmp_path / 'r'}", "~trainer.keep_sample_losses", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: ~trainer.keep_sample_losses is invalid: trainer.keep_sample_losses is a key of the schema, "
        "which a run reads; set it instead"
    )
    assert not (tmp_path / "r").exists()


def test_an_experiment_whose_grid_has_one_value_runs_alone(tmp_path: Path):
    from sweeper.__main__ import check_run

    # lecture_baseline's params hold lr: 0.1, the default: a single run drops nothing
    check_run(["experiment=lecture_baseline", *TINY, f"hydra.run.dir={tmp_path / 'r'}"])


@pytest.mark.parametrize(
    "argument, message",
    [
        ("schedule.epoch=3", "schedule.epoch was renamed schedule.switch_epoch"),
        ("schedule.decay=0.5", "schedule.decay was renamed schedule.gamma"),
        ("+schedule.epoch=3", "schedule.epoch was renamed schedule.switch_epoch"),
        ("++schedule.decay=0.5", "schedule.decay was renamed schedule.gamma"),
    ],
)
def test_a_knobs_former_name_is_refused_naming_the_new_one(argument, message):
    with pytest.raises(validate.ConfigError) as err:
        overrides.check_overrides(["schedule=step", argument], str(CONF))
    assert str(err.value) == message


@pytest.mark.parametrize(
    "overrides_, message",
    [
        (["++model.dropot=0.1"], "model.dropot is not a key of model=convnet: did you mean model.dropout?"),
        (
            ["model.batch_norm=2"],
            "model.batch_norm=2 is invalid: must be true or false",
        ),  # OmegaConf reads 2 as true
        (["optim.nesterov=yes"], "optim.nesterov='yes' is invalid: must be true or false"),
        (
            ["schedule=multistep", "schedule.milestones=[1,x]"],
            "schedule.milestones=[1,'x'] is invalid: must be a list of integers, not empty (e.g. [25])",
        ),
    ],
)
def test_the_schema_refuses_a_key_or_a_type_an_own_option_does_not_have(overrides_, message):
    with pytest.raises(validate.ConfigError) as err:
        validate.check(compose_cfg(*overrides_))
    assert str(err.value) == message


@pytest.mark.parametrize(
    "argument, message",
    [
        ("trainer.epochs=abc", "trainer.epochs='abc' is invalid: must be an integer >= 1"),
        (
            "trainer.keep_sample_losses=maybe",
            "trainer.keep_sample_losses='maybe' is invalid: must be true or false",
        ),
        (
            "trainer.early_stopping.patience=1.5",
            "trainer.early_stopping.patience=1.5 is invalid: must be an integer >= 1",
        ),
    ],
)
def test_hydra_composes_the_trainer_through_its_schema_and_its_type_errors_take_one_line(argument, message):
    with pytest.raises(validate.ConfigError) as err:
        overrides.check_overrides([argument], str(CONF))
    assert str(err.value) == message


def test_the_submitit_counts_are_read_from_its_queue_dataclass():
    counts = launcher_options.submitit_counts()
    assert {"timeout_min", "cpus_per_task", "gpus_per_node", "array_parallelism", "signal_delay_s"} <= set(
        counts
    )
    assert "partition" not in counts and "stderr_to_stdout" not in counts  # a string, a bool


@pytest.mark.parametrize("flags", [["-c", "job"], ["--cfg", "hydra", "-p", "hydra.launcher"], ["-cd", "."]])
def test_the_config_source_is_read_with_hydras_own_flags(flags):
    from sweeper.command_line import config_source

    source = config_source([*flags, "lr=0.1"])  # -c is --cfg, as Hydra reads it: not an ambiguous -cp/-cn
    assert source is not None and source.name == "config"


def a_users_schedule(*, lr, steps_per_epoch, total_steps):
    return lambda step: lr


@pytest.mark.parametrize(
    "value, message",
    [
        ("abc", "schedule.warmup_epochs='abc' is invalid: must be a number >= 0 and < 2"),
        ("5", "schedule.warmup_epochs=5 is invalid: must be a number >= 0 and < 2"),
    ],
)
def test_a_users_schedule_has_the_keys_the_loop_reads_checked_too(value, message):
    # No schema types a user's option: the training loop's own keys in it (warmup_epochs) still get their rule.
    cfg = compose_cfg(f"schedule._target_={__name__}.a_users_schedule", f"schedule.warmup_epochs={value}")
    with pytest.raises(validate.ConfigError) as err:
        validate.check(cfg)
    assert str(err.value) == message

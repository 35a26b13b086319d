"""trainer.objective: the number a run returns to an optimizing sweeper (hydra/sweeper=optuna).

`trainer.objective` names the summary.json key whose value the task returns as the trial's value
(null, the default: it returns its status string). The names are summary.json's own:

    final_<split>_<m>   the last epoch's value: split train, val (with data.val_size) or test;
                        m = loss or a name in trainer.metrics (acc, top5, ...)
    best_val_acc, min_val_loss     the best epoch's, on the validation split (data.val_size)
    best_test_acc, min_test_loss, min_train_loss

Set the sweeper's direction to match: maximize an accuracy, minimize a loss.

A run with no result (failed, diverged) returns its status string, which the Optuna sweeper
records as a FAIL trial, and the study goes on; a NaN would be a COMPLETE trial that poisons the
study's best.
"""

from __future__ import annotations

import math

from omegaconf import OmegaConf

# Results a run returns its objective for: it trained to its end, or its own early stopping ended it.
RESULTS = ("completed", "stopped_early")
# summary.json's reductions over epochs (sweeper.train), besides final_<split>_<m>.
BEST = ("best_val_acc", "min_val_loss", "best_test_acc", "min_test_loss", "min_train_loss")


def has_split(cfg) -> bool:
    size = OmegaConf.select(cfg, "data.val_size", default=None)
    return size is not None and size is not False and size != 0


def names(cfg) -> list[str]:
    """The summary.json keys this run's config can return as its objective."""
    metrics = OmegaConf.select(cfg, "trainer.metrics", default=None) or ["acc"]
    splits = ["train", "val", "test"] if has_split(cfg) else ["train", "test"]
    final = [f"final_{split}_{m}" for split in splits for m in ["loss", *metrics]]
    return final + [n for n in BEST if "_val_" not in n or has_split(cfg)]


def check(cfg) -> None:
    """trainer.objective is null or a key this run's summary.json will hold; else a one-line error."""
    from sweeper.validate import ConfigError

    objective = OmegaConf.select(cfg, "trainer.objective", default=None)
    if objective is None:
        return
    allowed = names(cfg)
    if objective not in allowed:
        hint = " (val needs a validation split: set data.val_size)" if "_val_" in str(objective) else ""
        raise ConfigError(
            f"trainer.objective={objective} is invalid{hint}: allowed values are {', '.join(allowed)}, or null"
        )


def returned(cfg, summary: dict) -> str | float:
    """What the task returns: its status, or, with trainer.objective set and a result to give, the
    objective's value as a float."""
    objective = OmegaConf.select(cfg, "trainer.objective", default=None)
    status = summary.get("status")
    if objective is None or status not in RESULTS:
        return status
    value = summary.get(objective)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return f"{status}, but summary.json has no {objective}"  # a FAIL trial (said why), never a NaN value
    return float(value)


# The sweepers that draw each job's values themselves, trial by trial.
OPTIMIZING = ("hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",)


def optimizing(config) -> bool:
    """Whether the sweep's sweeper is an optimizing one: its jobs are not known before launch."""
    return str(OmegaConf.select(config, "hydra.sweeper._target_", default="")) in OPTIMIZING


def checked_values(config, loader) -> list[tuple[str, list[str]]]:
    """The jobs the pre-checks compose for a study: every override at its first value, then each
    value of each swept key in turn (a choice's values, an interval's two ends), the others at
    their first, so that a value the checks refuse is refused before any trial starts."""
    from hydra.core.override_parser.types import IntervalSweep

    from hydra_plugins.sweeper_grid.grid import parsed

    options = []  # per override: the strings key=value it can take
    for override in parsed(config, loader):
        key = override.get_key_element()
        if not override.is_sweep_override():
            options.append([override.input_line])
        elif isinstance(override.value(), IntervalSweep):
            interval = override.value()
            options.append([f"{key}={interval.start}", f"{key}={interval.end}"])
        else:
            options.append([f"{key}={v}" for v in override.sweep_string_iterator()])
    first = [values[0] for values in options]
    swept = " ".join(values[0] for values in options if len(values) > 1)
    jobs = [(swept, first)]  # (what a refusal names, the job's overrides)
    for i, values in enumerate(options):
        jobs += [(value, [*first[:i], value, *first[i + 1 :]]) for value in values[1:]]
    return jobs


def start_study(config, loader) -> None:
    """SweepCallback's start of an optimizing sweep: the checks at the values a study can draw,
    trainer.objective set, a sweep dir without earlier trials (a new study numbers its trials
    from 0 again), and sweep.json with an empty job list (end_study fills it). A refusal is one
    line, exit 2."""
    import sys
    from pathlib import Path

    from hydra_plugins.sweeper_grid.grid import SweepRefused, composed_or_refused
    from sweeper import sweep
    from sweeper.validate import ConfigError, check_device
    from sweeper.validate import check as check_config

    sweep_dir = Path(config.hydra.sweep.dir)
    remote = str(config.hydra.launcher.get("_target_", "")).endswith("SlurmLauncher")
    try:
        earlier = (
            [d.name for d in sweep_dir.iterdir() if (d / "job.json").is_file()] if sweep_dir.is_dir() else []
        )
        if earlier:
            raise SweepRefused(
                f"{sweep_dir} holds the trials of an earlier sweep ({len(earlier)} run dirs): a new study numbers "
                "its trials from 0 again; choose another hydra.sweep.dir (with hydra.sweeper.storage and "
                "hydra.sweeper.study_name, the study goes on there)"
            )
        for num, (swept, job) in enumerate(checked_values(config, loader)):
            composed = composed_or_refused(lambda j: loader.load_sweep_config(config, list(j)), num, job)
            task = OmegaConf.masked_copy(composed, [k for k in composed if k != "hydra"])
            try:
                check_config(task)
                if not remote:  # trials that train on this machine: its devices
                    check_device(task)
            except ConfigError as e:
                where = f"the search space at {swept}: " if swept else ""
                raise SweepRefused(f"{where}{e}") from None
            if OmegaConf.select(task, "trainer.objective", default=None) is None:
                raise SweepRefused(
                    "trainer.objective=null is invalid for hydra/sweeper=optuna, which needs a number from each "
                    f"run: allowed values are {', '.join(names(task))}"
                )
        sweep.check_writable(sweep_dir)  # the grid's own check: made, and writable
        sweep.write_sweep(sweep_dir, config, [], sweeper="optuna")  # the trials are listed by end_study
    except SweepRefused as e:
        # Hydra turns a callback's exception into a warning, and would launch all the same.
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    sweep.STARTED.append(sweep_dir)


def end_study(sweep_dir) -> None:
    """List an optimizing sweep's trials in its sweep.json, from their job.json, so that the end
    summary, `status` and the analysis see every trial; print the study's best trial."""
    from pathlib import Path

    from sweeper.processes import read_job, read_object
    from sweeper.runlog import atomic_write, to_json

    sweep_dir = Path(sweep_dir)
    known = read_object(sweep_dir / "sweep.json")  # a damaged one: the summary names it
    if known is None or known.get("sweeper") != "optuna":
        return
    trials = []
    for run_dir in (d for d in sweep_dir.iterdir() if d.is_dir()):
        job = read_job(run_dir) or {}
        if isinstance(job.get("job_num"), int):
            trials.append((job["job_num"], run_dir.name, [str(o) for o in job.get("overrides") or []]))
    trials.sort()
    known["jobs"] = [{"num": i, "dir": d, "overrides": o} for i, (_, d, o) in enumerate(trials)]
    atomic_write(sweep_dir / "sweep.json", to_json(known))
    results = sweep_dir / "optimization_results.yaml"
    if results.is_file():
        best = OmegaConf.load(results)
        if "best_value" in best:
            params = " ".join(f"{k}={v}" for k, v in (best.get("best_params") or {}).items())
            print(f"\nstudy: best value {best.best_value:.6g} at {params} ({results.name})")

"""hydra/sweeper=halving: successive halving (Hyperband's inner loop) over the grid's configurations.

    python -m sweeper -m hydra/sweeper=halving model.channels=8,16,32 lr=0.3,0.1,0.03 trainer.epochs=9
    python -m sweeper -m hydra/sweeper=halving experiment=lecture_capacity hydra.sweeper.eta=2

The grid sweeper's syntax, jobs and checks, then rungs instead of one launch: every configuration
trains to `min_epochs`, the best 1/eta of them (by `metric` at that epoch) go on to min_epochs x
eta, and so on, the last rung to trainer.epochs. Each rung is one launch of its configurations
with `trainer.until_epoch` set to the rung's epoch: a run pauses there with its checkpoint, and a
promoted one resumes from it in its own run dir, exactly as if never paused. One not promoted is
left `stopped`. sweep.json records each rung (epoch, jobs, metric values, promoted); a rerun reads
the finished rungs back and relaunches the rung it stopped in. One bracket is run (no Hyperband
outer loop).
"""

# No `from __future__ import annotations`: Hydra's plugin scan executes this module before it is
# in sys.modules, and dataclasses then cannot resolve string annotations.
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.sweeper_grid._refusal import SweepRefused
from hydra_plugins.sweeper_grid.grid import GridSweeper, label


@dataclass
class HalvingSweeperConf:
    _target_: str = "hydra_plugins.sweeper_halving.halving.HalvingSweeper"
    params: dict = field(default_factory=dict)  # as the grid's: the sweep's overrides, kept in the config
    eta: Any = 3  # a rung keeps the best ceil(n / eta) of its n configurations; an int >= 2
    min_epochs: Any = 1  # rung i trains to min_epochs x eta^i epochs, the last one to trainer.epochs
    metric: Any = None  # a metrics line's column; null = val_acc with data.val_size, else test_acc
    mode: Any = None  # max or min; null = min for a *_loss metric, else max


ConfigStore.instance().store(
    group="hydra/sweeper", name="halving", node=HalvingSweeperConf, provider="sweeper"
)


def settings(eta, min_epochs, mode) -> tuple[int, int, str | None]:
    if isinstance(eta, bool) or not isinstance(eta, int) or eta < 2:
        raise SweepRefused(f"hydra.sweeper.eta={eta} is invalid: must be an integer >= 2")
    if isinstance(min_epochs, bool) or not isinstance(min_epochs, int) or min_epochs < 1:
        raise SweepRefused(f"hydra.sweeper.min_epochs={min_epochs} is invalid: must be an integer >= 1")
    if mode not in (None, "max", "min"):
        raise SweepRefused(
            f"hydra.sweeper.mode={mode} is invalid: allowed values are max, min, or null (by the metric)"
        )
    return eta, min_epochs, mode


def rung_epochs(min_epochs: int, eta: int, epochs: int) -> list[int]:
    """min_epochs x eta^i, below trainer.epochs, then trainer.epochs."""
    rungs = []
    while min_epochs * eta ** len(rungs) < epochs:
        rungs.append(min_epochs * eta ** len(rungs))
    return [*rungs, epochs]


def quoted(value: str) -> str:
    """A run dir as an override's value: quoted, as override_dirname's `lr=0.1,seed=0` has commas."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def value_at(run_dir: Path, epoch: int, metric: str) -> float | None:
    """The run's `metric` at `epoch`, if it reached that epoch and is still in the race; else None
    (failed, diverged, stopped early, interrupted)."""
    from sweeper.processes import read_object
    from sweeper.runlog import complete_lines

    summary = read_object(run_dir / "summary.json") or {}
    if summary.get("status") not in ("paused", "stopped", "completed"):
        return None
    row = next((r for r in complete_lines(run_dir / "metrics.jsonl") if r.get("epoch") == epoch), {})
    value = row.get(metric)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def promoted(jobs: list[int], values: list[float | None], keep: int, mode: str) -> list[int]:
    """The best `keep` of `jobs` by their values (None: out of the race), ties to the lower job
    number; in job order."""
    ranked = sorted(
        (-v if mode == "max" else v, num) for num, v in zip(jobs, values, strict=True) if v is not None
    )
    return sorted(num for _, num in ranked[:keep])


class AsConfiguration:
    """The app's task, told its configuration's number as hydra.job.num: a rung's launch numbers
    its jobs in launch order, whereas a configuration keeps its number (and run dir) across rungs.
    Picklable, for launchers that run the task in another process."""

    def __init__(self, task: Callable) -> None:
        self.task = task
        self.nums: dict[tuple[str, ...], int] = {}  # a launched job's task overrides -> its number

    def __call__(self, cfg: DictConfig) -> Any:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import read_write

        hydra = HydraConfig.get()
        num = self.nums.get(tuple(hydra.overrides.task))
        if num is not None:
            with read_write(hydra.job):
                hydra.job.num = num
        return self.task(cfg)


class HalvingSweeper(GridSweeper):
    def __init__(self, eta=3, min_epochs=1, metric=None, mode=None, params=None) -> None:
        super().__init__(max_batch_size=None, params=params)
        # Checked in sweep(): Hydra would wrap a refusal raised here in its instantiation error.
        self.eta, self.min_epochs, self.mode, self.metric = eta, min_epochs, mode, metric
        self.epochs = 0  # trainer.epochs, the same for every configuration (_check_configs)
        self.starts_over = False  # trainer.resume=false (_check_configs)

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.task = AsConfiguration(task_function)
        super().setup(hydra_context=hydra_context, task_function=self.task, config=config)

    def _app_checks(self) -> list[Callable]:
        # The sweep's own values first: the app's checks write sweep.json.
        return [self._check_configs, *super()._app_checks()]

    def _check_configs(self, config: DictConfig, jobs: list[tuple[list[str], DictConfig]]) -> list[list[str]]:
        """Refuse what halving cannot rank or rung."""
        from sweeper import metrics  # torch: not in every process that scans Hydra's plugins

        epochs = {int(composed.trainer.epochs) for _, composed in jobs}
        if len(epochs) != 1:
            raise SweepRefused(
                f"trainer.epochs takes {len(epochs)} values ({', '.join(map(str, sorted(epochs)))}) in this sweep: "
                "hydra/sweeper=halving rungs every configuration over the same trainer.epochs"
            )
        self.epochs = epochs.pop()
        if self.min_epochs > self.epochs:
            raise SweepRefused(
                f"hydra.sweeper.min_epochs={self.min_epochs} is invalid: must be <= trainer.epochs={self.epochs}"
            )
        for num, (job, composed) in enumerate(jobs):
            if composed.trainer.get("until_epoch") is not None:
                raise SweepRefused(
                    f"{label(num, job)}: trainer.until_epoch={composed.trainer.until_epoch} is set by "
                    "hydra/sweeper=halving at each rung; leave it null"
                )
            allowed = metrics.columns(
                composed.trainer.get("metrics") or ["acc"], bool(composed.data.get("val_size"))
            )
            if self.metric is None:
                self.metric = "val_acc" if "val_acc" in allowed else "test_acc"
            if self.metric not in allowed:
                raise SweepRefused(
                    f"hydra.sweeper.metric={self.metric} is invalid: allowed values are {', '.join(allowed)}, "
                    "or null (val_acc with a validation split, else test_acc)"
                )
        self.mode = self.mode or ("min" if self.metric.endswith("_loss") else "max")
        # trainer.resume=false: rung 0 sets the earlier records aside, the later rungs resume rung 0's
        self.starts_over = not all(composed.trainer.resume for _, composed in jobs)
        return [job for job, _ in jobs]

    def sweep(self, arguments: list[str]) -> Any:
        from sweeper.sweep import mark_stopped, read_halving, read_sweep, write_halving

        self.eta, self.min_epochs, self.mode = settings(self.eta, self.min_epochs, self.mode)
        self.check_jobs()
        self.loader.composed.clear()  # each rung's jobs differ from the grid's (until_epoch): composed anew
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")  # as Hydra's sweep does
        listed = read_sweep(sweep_dir)
        # Each rung's job goes into its configuration's run dir, as check_jobs recorded it.
        dirs = [job["dir"] for job in listed["jobs"]] if listed else []
        if len(dirs) != len(self.jobs):  # no app check wrote sweep.json: another app
            raise SweepRefused(
                "hydra/sweeper=halving needs sweep.json's job list (sweeper.sweep.SweepCallback)"
            )
        wanted = {"eta": self.eta, "min_epochs": self.min_epochs, "metric": self.metric, "mode": self.mode,
                  "epochs": self.epochs}  # fmt: skip
        record = read_halving(sweep_dir)
        if record is not None and {k: record.get(k) for k in wanted} != wanted:
            was = " ".join(f"{k}={record.get(k)}" for k in wanted)
            raise SweepRefused(
                f"{sweep_dir} holds a halving sweep with {was}; rerun it with those settings, "
                "or choose another hydra.sweep.dir"
            )
        done = [] if self.starts_over else list((record or {}).get("rungs") or [])
        record = {**wanted, "rungs": []}
        survivors, launched, returns = list(range(len(self.jobs))), 0, []
        epochs = rung_epochs(self.min_epochs, self.eta, self.epochs)
        for rung, epoch in enumerate(epochs):
            last = rung == len(epochs) - 1
            before = done[rung] if rung < len(done) else {}
            if before.get("jobs") == survivors and "promoted" in before and before.get("epoch") == epoch:
                entry = before  # a finished rung: read back, not retrained
                print(
                    f"halving: rung {rung} (epoch {epoch}) already done, read from sweep.json",
                    file=sys.stderr,
                )
            else:
                write_halving(
                    sweep_dir, {**record, "rungs": [*record["rungs"], {"epoch": epoch, "jobs": survivors}]}
                )
                print(
                    f"halving: rung {rung}: {len(survivors)} configurations to epoch {epoch} of {self.epochs}",
                    file=sys.stderr,
                    flush=True,
                )
                again = ["trainer.resume=true"] if self.starts_over and rung > 0 else []
                tasks = {n: [*self.jobs[n], *again, f"trainer.until_epoch={epoch}"] for n in survivors}
                self.task.nums = {tuple(task): n for n, task in tasks.items()}
                batch = [[*tasks[n], f"hydra.sweep.subdir={quoted(dirs[n])}"] for n in survivors]
                returns.append(self.launcher.launch(batch, initial_job_idx=launched))
                values = [value_at(sweep_dir / dirs[n], epoch, self.metric) for n in survivors]
                keep = 1 if last else math.ceil(len(survivors) / self.eta)
                entry = {"epoch": epoch, "jobs": survivors, "values": values,
                         "promoted": [] if last else promoted(survivors, values, keep, self.mode)}  # fmt: skip
                if last:
                    entry["picked"] = (promoted(survivors, values, 1, self.mode) or [None])[0]
            record["rungs"].append(entry)
            # Recorded before the others are marked: a rerun after a kill in between marks them again.
            write_halving(sweep_dir, record)
            for num, value in zip(survivors, entry["values"], strict=True):
                if value is not None and num not in entry["promoted"] and not last:
                    mark_stopped(sweep_dir / dirs[num], rung)
            launched += len(survivors)
            survivors = entry["promoted"]
            if not survivors:
                break
        self._report(record, dirs)
        return returns

    def _report(self, record: dict, dirs: list[str]) -> None:
        rungs = record["rungs"]
        picked = rungs[-1].get("picked") if rungs else None
        # each launched configuration trains from the last rung's epoch on
        spent = sum(
            len(r["jobs"]) * (r["epoch"] - (rungs[i - 1]["epoch"] if i else 0)) for i, r in enumerate(rungs)
        )
        grid = len(self.jobs) * self.epochs
        if picked is None:
            print(f"halving: no configuration reached epoch {self.epochs}", file=sys.stderr)
            return
        value = rungs[-1]["values"][rungs[-1]["jobs"].index(picked)]
        print(
            f"halving: picked job {picked} ({' '.join(self.jobs[picked])}, run dir {dirs[picked]}): "
            f"{self.metric} {value:.4g} at epoch {self.epochs}; {spent} epochs trained, "
            f"{spent / grid:.0%} of the full grid's {grid}",
            file=sys.stderr,
        )

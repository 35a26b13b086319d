"""Train one run, or a grid of runs with -m, from the Hydra config in conf/.

    python -m sweeper                                          # the lecture's protocol
    python -m sweeper -m model.channels=16,32,64 lr=0.2,0.1,0.01
    python -m sweeper -m experiment=lecture_lr
    python -m sweeper -m hydra/launcher=submitit_slurm experiment=lecture_lr2

Outputs: outputs/runs/<date>/<time>/ for one run, outputs/multirun/<date>/<time>/<job>/ for a
sweep; docs/run-record.md describes the files.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from sweeper import command_line, launcher_options, objective, overrides, rundir, sweep, train, validate
from sweeper.command_line import CONF, config_source


@hydra.main(config_path=CONF, config_name="config", version_base=None)
def main(cfg: DictConfig) -> str | float:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    try:
        try:
            validate.check(cfg)
            validate.check_device(cfg)  # the machine that trains: a SLURM job checks its node's GPUs
        except validate.ConfigError as e:
            if multirun and sweep.job_state(run_dir)[0] in rundir.ENDED:
                pass  # train.run below skips it, untouched: nothing to refuse
            elif multirun and not (run_dir / "checkpoint.pt").exists():
                # A sweep's jobs were checked before launch: what fails here fails on this node
                # (its GPUs). Recorded as a failed run, so that the sweep's summary says why; a run
                # with epochs to resume is left as it is.
                print(f"error: {e}", file=sys.stderr)
                return rundir.refused(cfg, run_dir, list(hc.overrides.task), hc.job.num, hc.output_subdir, e)
            raise
        overrides_given = list(hc.overrides.task)
        job_num = hc.job.num if multirun else None
        summary = train.run(
            cfg, run_dir, overrides=overrides_given, job_num=job_num, hydra_files=hc.output_subdir
        )
    except validate.ConfigError as e:
        rundir.drop_pending(run_dir, hc.output_subdir)  # the run dir stays as it was
        print(f"error: {e}", file=sys.stderr)
        if multirun:
            return "invalid"
        raise SystemExit(2) from None
    except OSError as e:
        # The record cannot be written or read (a full disk, a read-only dir, EIO): no traceback,
        # and in a sweep this job fails alone; what was written stays, and a rerun resumes it.
        where = f" ({e.filename})" if e.filename else ""
        print(
            f"error: {run_dir}: the run record cannot be written or read: {e.strerror or e}{where}",
            file=sys.stderr,
        )
        if multirun:
            return "failed"
        raise SystemExit(1) from None
    if not multirun:
        print(f"{summary['status']}: record in {hc.runtime.output_dir}", file=sys.stderr)
        if summary["status"] not in ("completed", "stopped_early"):  # stopped by its early stopping: a result
            raise SystemExit(1)
    return objective.returned(cfg, summary)  # the status, or trainer.objective's value for Optuna


def check_run(arguments: list[str], source: command_line.ConfigSource | None = None, cfg=None) -> None:
    """Refuse a single run in one line before Hydra creates its run dir or writes .hydra/ there:
    a bad value, a run dir that a live process still trains, or one holding another config.
    `cfg`: the run's config as check_overrides composed it, if it did (a compose is 80 ms)."""
    from hydra import compose
    from omegaconf import OmegaConf

    source = source or command_line.ConfigSource(CONF)
    given_overrides = [a for a in arguments if command_line.is_override(a)]
    try:
        if cfg is None:
            with source.hydra():
                cfg = compose(source.name, overrides=given_overrides, return_hydra_config=True)
        run_dir = Path(str(cfg.hydra.run.dir))
    except Exception:
        return  # Hydra will not compose it either, and says why in its own words
    # A config that brings a grid (experiment=lecture_lr) would run one job at its defaults,
    # silently: its grid runs with -m, or one of its values is picked on the command line.
    given = {a.lstrip("+~").partition("=")[0] for a in given_overrides}
    grid = [k for k, v in command_line.config_grid(cfg).items() if k.lstrip("+~") not in given and len(v) > 1]
    if grid:
        chosen = [a for a in given_overrides if a.startswith("experiment=")]
        swept = " ".join(f"{k}={cfg.hydra.sweeper.params[k]}" for k in grid)
        raise validate.ConfigError(
            f"{chosen[-1] if chosen else 'this config'} is a grid ({swept}): add -m to run its jobs, "
            f"or set {', '.join(grid)} for one run"
        )
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    validate.check(task)
    validate.check_device(task)  # a single run trains here
    rundir.check_start(task, run_dir)
    problem = rundir.unwritable(run_dir)  # before Hydra's own writes there, which fail with a traceback
    if problem:
        raise validate.ConfigError(f"hydra.run.dir={run_dir} cannot hold the run's record: {problem}")


def with_hydra_files(arguments: list[str]) -> list[str]:
    """The arguments plus the override that has Hydra write .hydra/ into a pending dir, which the
    run moves into place once it owns its dir (unless the user chose the subdir). It goes right
    after the last override: Hydra reads its overrides as one unbroken run of words."""
    if any(a.lstrip("+~").startswith("hydra.output_subdir") for a in arguments):
        return arguments
    at = max((i + 1 for i, a in enumerate(arguments) if command_line.is_override(a)), default=len(arguments))
    return [
        *arguments[:at],
        f"hydra.output_subdir={rundir.PENDING_HYDRA_FILES}{os.getpid()}",
        *arguments[at:],
    ]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, as Ctrl-C raises KeyboardInterrupt: a run stops as it
    does on Ctrl-C (a rerun resumes it) and a sweep prints its summary."""

    signum = signal.SIGTERM


def _terminated(signum, frame) -> None:
    raise Terminated()


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:  # one ignored on entry stays ignored
        signal.signal(signal.SIGTERM, _terminated)
    try:
        # The checks compose the config Hydra will compose (-cp, -cn); where they cannot tell
        # which, Hydra (and validate.check, per job) speaks instead. The launcher's values matter
        # only to a sweep that will launch.
        flags = command_line.hydra_flags(arguments)
        modes = [m for m, on in [("-m/--multirun", flags and flags.multirun), ("-c/--cfg", flags and flags.cfg),
                 ("-i/--info", flags and flags.info), ("-sc/--shell-completion", flags and flags.shell_completion)] if on]  # fmt: skip
        if len(modes) > 1:  # Hydra's ValueError, with a traceback
            hint = (
                " (drop -m to print a sweep's config)" if modes[:2] == ["-m/--multirun", "-c/--cfg"] else ""
            )
            raise validate.ConfigError(
                f"{' and '.join(modes)} cannot go together: Hydra does one of --multirun, --cfg, --info "
                f"and --shell-completion at a time{hint}"
            )
        source = config_source(arguments)
        if source:
            composed = overrides.check_overrides(arguments, source)
            if command_line.launches(flags):
                if command_line.sweeping(arguments):
                    launcher_options.check_launcher(arguments, source)  # check_jobs does the rest, per job
                else:
                    check_run(arguments, source, cfg=composed)
        if command_line.launches(flags) and not flags.shell_completion:
            sys.argv[1:] = with_hydra_files(arguments)
    except validate.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        with sweep.refusals_in_one_line():  # a sweep refused before launch: one line, exit 2
            main()
    except KeyboardInterrupt as stop:
        # Ctrl-C or SIGTERM: the records say where each run stopped (a rerun resumes it) and a
        # sweep prints its summary; a traceback would add nothing. Die by the signal, as an
        # interrupted program does, so that a calling shell sees 130 (143) and stops its script too.
        signum = getattr(stop, "signum", signal.SIGINT)
        signal.signal(signum, signal.SIG_DFL)  # a second one while the summary prints: stop now
        if sweep.STARTED:  # Hydra's basic launcher stops without its end callback
            sweep.report_end(sweep.STARTED[-1])
        sys.stdout.flush()  # dying by the signal flushes nothing
        os.kill(os.getpid(), signum)

"""Train one run, or a grid of runs with -m, from the Hydra config in conf/.

    python -m sweeper                                          # the lecture's protocol
    python -m sweeper -m model.channels=16,32,64 lr=0.2,0.1,0.01
    python -m sweeper -m experiment=lecture_lr
    python -m sweeper -m hydra/launcher=submitit_slurm experiment=lecture_lr2

Outputs: outputs/runs/<date>/<time>/ for one run, outputs/multirun/<date>/<time>/<job>/ for a
sweep; docs/run-record.md describes the files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from sweeper import train, validate

CONF = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(config_path=CONF, config_name="config", version_base=None)
def main(cfg: DictConfig) -> str:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        validate.check(cfg)
        summary = train.run(
            cfg,
            Path(hc.runtime.output_dir),
            overrides=list(hc.overrides.task),
            job_num=hc.job.num if multirun else None,
        )
    except validate.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        if multirun:
            return "invalid"
        raise SystemExit(2) from None
    if not multirun:
        print(f"{summary['status']}: record in {hc.runtime.output_dir}", file=sys.stderr)
        if summary["status"] != "completed":
            raise SystemExit(1)
    return summary["status"]


# Hydra's flags after which the pre-checks stand aside: another config than conf/config.yaml, or
# shell completion (whose `install=bash` is no override); and those with which nothing launches.
ANOTHER_CONFIG = (
    "-cp",
    "--config-path",
    "-cn",
    "--config-name",
    "-cd",
    "--config-dir",
    "-sc",
    "--shell-completion",
)
NO_LAUNCH = ("-c", "--cfg", "-i", "--info", "-h", "--help", "--hydra-help")


def _flagged(arguments: list[str], *flags: str) -> bool:
    """Whether a flag is given, as argparse reads it: `--flag`, `--flag=x`, or a prefix (`--multi`)."""
    for a in arguments:
        name = a.split("=", 1)[0]
        if any(name == f or (name.startswith("--") and len(name) > 2 and f.startswith(name)) for f in flags):
            return True
    return False


def _sweeps(arguments: list[str]) -> bool:
    modes = {"MULTIRUN", "RunMode.MULTIRUN", "2"}
    return _flagged(arguments, "-m", "--multirun") or any(
        a.lstrip("+").partition("=")[::2] in {("hydra.mode", m) for m in modes} for a in arguments
    )


if __name__ == "__main__":
    arguments = sys.argv[1:]
    try:
        # The checks read conf/config.yaml: with another config Hydra (and validate.check, per
        # job) speaks instead. The launcher's values matter only to a sweep that will launch.
        if not _flagged(arguments, *ANOTHER_CONFIG):
            validate.check_overrides(arguments, CONF)
            if _sweeps(arguments) and not _flagged(arguments, *NO_LAUNCH):
                validate.check_launcher(arguments, CONF)
    except validate.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    main()

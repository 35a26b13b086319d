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


if __name__ == "__main__":
    try:
        validate.check_overrides(sys.argv[1:], CONF)
        validate.check_launcher(sys.argv[1:], CONF)
    except validate.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    main()

"""Hydra's own launcher conformance suites, run against the project's launchers.

Parametrized as Hydra's own plugins test themselves (hydra-submitit-launcher, the joblib
launcher): LauncherTestSuite sweeps Hydra's test apps (hydra/test_utils/configs) in this process;
IntegrationTestSuite runs a generated `@hydra.main` app in a fresh interpreter. Neither app has
anything of this project's config (no trainer, optim or data): the launchers must serve any
Hydra app. Every launcher variant is here: the pool in this process, with spawned workers, and
with fuse=true (nothing of these apps fuses: each job runs alone); the project's submitit
launcher (what the grid sweeper makes of submitit_local) with one job per array task and with
several. The default run has both suites on the two launcher classes (the pool in this process,
submitit_local one job per task); the other variants are marked slow, and CI runs them
(`pytest -m slow`).
"""

import pytest
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite

SUBMITIT = ["hydra.launcher.timeout_min=2"]
LAUNCHERS = {  # id: (launcher, overrides, whether its runs are slow: in `pytest -m slow`, which CI runs)
    "pool": ("pool", [], False),
    "pool-workers": ("pool", ["hydra.launcher.slots_per_device=2"], True),
    "pool-fuse": ("pool", ["hydra.launcher.fuse=true"], True),
    "submitit_local": ("sweeper_local", SUBMITIT, False),
    "submitit_local-packed": ("sweeper_local", [*SUBMITIT, "hydra.launcher.jobs_per_task=2"], True),
}


pytestmark = pytest.mark.usefixtures("as_in_a_fresh_process")


@pytest.mark.parametrize(
    "launcher_name, overrides",
    [
        pytest.param(name, list(overrides), id=key, marks=[pytest.mark.slow] if slow else [])
        for key, (name, overrides, slow) in LAUNCHERS.items()
    ],
)
class TestLaunchers(LauncherTestSuite):
    pass


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [
        pytest.param(
            {},
            [
                "-m",
                "hydra/hydra_logging=disabled",
                "hydra/job_logging=disabled",
                f"hydra/launcher={name}",
                *overrides,
            ],
            id=key,
            marks=[pytest.mark.slow] if slow else [],
        )
        for key, (name, overrides, slow) in LAUNCHERS.items()
    ],
)
class TestLaunchersIntegration(IntegrationTestSuite):
    pass

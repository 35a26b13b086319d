"""Hydra's own conformance suites, with Hydra's own test apps, through the grid sweeper
(hydra_plugins/sweeper_grid), parametrized as Hydra's plugins test themselves: the grid sweeper is
a general Hydra sweeper, which any Hydra app can use, and the project's checks stay the project's."""

import pytest
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)

from hydra_plugins.sweeper_grid.grid import SweepRefused

GRID = ["hydra/sweeper=grid"]


pytestmark = pytest.mark.usefixtures("as_in_a_fresh_process")


@pytest.mark.parametrize("launcher_name, overrides", [("basic", GRID)])
class TestGridSweeperWithTheBasicLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [
        pytest.param(
            {},
            [
                "-m",
                *GRID,
                "hydra/launcher=basic",
                "hydra/hydra_logging=disabled",
                "hydra/job_logging=disabled",
            ],
            id="grid_sweeper_basic_launcher_multirun",
        )
    ],
)
class TestGridSweeperIntegration(IntegrationTestSuite):
    pass


@pytest.mark.parametrize("launcher_name, overrides", [("basic", [*GRID, "hydra.sweeper.max_batch_size=2"])])
class TestGridSweeperWithBatching(BatchedSweeperTestSuite):
    pass


@pytest.mark.usefixtures("hydra_restore_singletons")
def test_a_job_that_does_not_compose_is_refused_with_a_hydra_exception_naming_it(hydra_sweep_runner, tmpdir):
    # Before, the project's checks ran on every app: every job of Hydra's test apps was refused
    # with SystemExit(2) ("trainer.epochs=None is invalid"); a bad job must raise, not exit.
    sweep = hydra_sweep_runner(
        calling_file=None,
        calling_module="hydra.test_utils.a_module",
        task_function=None,
        config_path="configs",
        config_name="compose.yaml",
        overrides=[*GRID, "+a=1,2", "boo=bar,baz"],  # a sweep: composed job by job
        temp_dir=tmpdir,
    )
    refused = pytest.raises(SweepRefused, match=r"^job 0 \(\+a=1 boo=bar\): Could not override 'boo'\.$")
    with refused, sweep:
        pass
    assert not list(tmpdir.listdir())  # refused before the sweep dir was written

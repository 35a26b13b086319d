"""Shared fixtures: the real config, composed from conf/ and shrunk to run in seconds on a CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"

# Small enough for a 2-core CPU, big enough that the convnet learns something in 2 epochs.
TINY = [
    "data=synthetic",
    "data.generated_train=300",
    "data.generated_test=100",
    "data.cache_dir=null",  # generated in-process: nothing written outside tmp_path
    "trainer.epochs=2",
    "trainer.batch_size=50",
    "model.channels=4",
    "model.units=[16]",
]


def compose_cfg(*overrides: str, tiny: bool = True):
    """The project's real config (conf/config.yaml and its groups) with overrides applied."""
    base = TINY if tiny else []
    if any(o.startswith("data=") for o in overrides):  # another data set: keep only the small model
        base = [o for o in base if not o.startswith("data") or o.startswith("data.cache_dir")]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="config", overrides=[*base, *overrides])


def run_cli(
    *args: str, cwd: Path, module: str = "sweeper", timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run `python -m <module> ARGS` as a user would, from `cwd` (where outputs/ lands)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def tiny_args() -> list[str]:
    return list(TINY)


@pytest.fixture
def as_in_a_fresh_process(monkeypatch):
    """For Hydra's own conformance suites. Their integration apps run in a fresh interpreter,
    which must find this project's hydra_plugins even where the project is not installed; and
    the suites expect Hydra's default version_base, as Hydra's own tests have it, where the
    project's tests that compose in this process set it (version_base=None: no chdir)."""
    from hydra.version import _UNSPECIFIED_, VersionBase

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    before = VersionBase.instance().getbase()
    VersionBase.instance().version_base = _UNSPECIFIED_
    yield
    VersionBase.instance().version_base = before

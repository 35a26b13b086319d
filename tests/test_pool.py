"""The pool launcher: long-lived workers pinned to device slots, each job a complete, independent record."""

import json

import pytest
import torch

from hydra_plugins.sweeper_pool.launcher import resolve_devices
from tests.conftest import TINY, run_cli

RECORD = {"config.json", "job.json", "metrics.jsonl", "losses.npz", "summary.json", "checkpoint.pt"}


def without_times(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in rows]


def test_jobs_spread_over_device_slots_on_reused_workers(tmp_path):
    grid = ["lr=0.2,0.1,0.05,0.02"]
    pooled = run_cli(
        "-m", "hydra/launcher=pool", "hydra.launcher.devices=[cpu]", "hydra.launcher.slots_per_device=2",
        *TINY, *grid, f"hydra.sweep.dir={tmp_path / 'pool'}", cwd=tmp_path,
    )  # fmt: skip
    assert pooled.returncode == 0, pooled.stderr[-2000:]
    jobs = [json.loads((tmp_path / "pool" / str(n) / "job.json").read_text()) for n in range(4)]
    # (GPU slots are pinned as test_a_workers_gpu_index_counts_the_gpus_the_launcher_sees shows)
    assert {j["cuda_visible_devices"] for j in jobs} == {""}  # CPU slots: their workers see no GPU
    assert len({j["pid"] for j in jobs}) == 2  # two workers, each ran two jobs: start-up paid once
    for n in range(4):
        assert {p.name for p in (tmp_path / "pool" / str(n)).iterdir()} >= RECORD
        assert json.loads((tmp_path / "pool" / str(n) / "summary.json").read_text())["status"] == "completed"

    # a pooled job computes exactly what the same job computes under the basic launcher
    basic = run_cli("-m", *TINY, *grid, f"hydra.sweep.dir={tmp_path / 'basic'}", cwd=tmp_path)
    assert basic.returncode == 0
    for n in range(4):
        assert without_times(tmp_path / "pool" / str(n) / "metrics.jsonl") == without_times(
            tmp_path / "basic" / str(n) / "metrics.jsonl"
        )


def test_auto_devices_fall_back_to_the_cpu_without_a_gpu():
    import torch

    expected = [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else ["cpu"]
    assert resolve_devices(["auto"]) == expected
    assert resolve_devices([2, 3]) == ["2", "3"]


def test_fuse_trains_compatible_jobs_as_one_program_with_separate_records(tmp_path):
    grid = ["lr=0.1,0.05", "trainer.seed=0,1", "trainer.channels_last=false"]
    fused = run_cli(
        "-m",
        "hydra/launcher=pool",
        "hydra.launcher.fuse=true",
        *TINY,
        *grid,
        f"hydra.sweep.dir={tmp_path / 'fused'}",
        cwd=tmp_path,
    )
    assert fused.returncode == 0, fused.stderr[-2000:]
    assert "fusing jobs [0, 1, 2, 3] into one program" in fused.stdout + fused.stderr
    basic = run_cli("-m", *TINY, *grid, f"hydra.sweep.dir={tmp_path / 'basic'}", cwd=tmp_path)
    assert basic.returncode == 0
    for n in range(4):
        run = tmp_path / "fused" / str(n)
        assert {p.name for p in run.iterdir()} >= RECORD | {".hydra"}
        assert json.loads((run / "summary.json").read_text())["fused_trials"] == 4
        assert json.loads((run / "config.json").read_text()) == json.loads(
            (tmp_path / "basic" / str(n) / "config.json").read_text()
        )
        for a, b in zip(
            without_times(run / "metrics.jsonl"),
            without_times(tmp_path / "basic" / str(n) / "metrics.jsonl"),
            strict=True,
        ):
            assert a["test_loss"] == pytest.approx(b["test_loss"], rel=2e-3)


@pytest.mark.parametrize("fuse", ["false", "true"])
def test_one_cpu_worker_is_this_process(tmp_path, monkeypatch, fuse):
    # No GPU to pin and one slot: spawning a worker would only import torch a second time.
    import os
    import sys

    from hydra.core.global_hydra import GlobalHydra

    from sweeper.__main__ import main

    argv = ["sweeper", "-m", "hydra/launcher=pool", "hydra.launcher.devices=[cpu]", f"hydra.launcher.fuse={fuse}",
            *TINY, "trainer.epochs=1", "lr=0.1,0.05", f"hydra.sweep.dir={tmp_path}"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    GlobalHydra.instance().clear()
    main()
    GlobalHydra.instance().clear()
    for n in range(2):
        assert json.loads((tmp_path / str(n) / "summary.json").read_text())["status"] == "completed"
        assert json.loads((tmp_path / str(n) / "job.json").read_text())["pid"] == os.getpid()


def test_a_single_worker_runs_here_on_the_cpu_or_gpu_0_only():
    from hydra_plugins.sweeper_pool.launcher import runs_here

    assert runs_here(["0"], 1)
    # the CPU beside a GPU needs a process that cannot see the GPU (trainer.device=auto would pick it)
    assert runs_here(["cpu"], 1) == (not torch.cuda.is_available())
    # GPU 1 must be pinned in its own process, so that cuda:0 there means GPU 1, as in any worker
    assert not runs_here(["1"], 1) and not runs_here(["0"], 2) and not runs_here(["0", "1"], 2)


def test_a_workers_gpu_index_counts_the_gpus_the_launcher_sees(monkeypatch):
    # Under CUDA_VISIBLE_DEVICES=2,3 (a SLURM allocation, say), device 1 is physical GPU 3.
    import os
    import queue

    from hydra_plugins.sweeper_pool.launcher import _pin_worker

    for visible, device, pinned in (
        ("2,3", "1", "3"),
        (None, "1", "1"),
        ("2,3", "cpu", ""),
        (None, "cpu", ""),
    ):
        slots = queue.Queue()
        slots.put(device)
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        _pin_worker(slots, visible)
        assert os.environ["CUDA_VISIBLE_DEVICES"] == pinned


def test_gpu_indices_beyond_the_visible_gpus_are_refused(monkeypatch):
    # A worker pinned to a GPU it cannot see would train on the CPU without a word.
    from hydra_plugins.sweeper_pool.launcher import PoolLauncher

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # under CUDA_VISIBLE_DEVICES=2,3, say
    assert PoolLauncher(devices=[0, 1]).devices == ["0", "1"]
    with pytest.raises(
        ValueError, match=r"sees 2 GPUs; allowed values are \[auto\], \[cpu\] or indices 0\.\.1"
    ):
        PoolLauncher(devices=[0, 2])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(
        ValueError, match=r"devices=\['0'\] is invalid: this process sees no GPUs; allowed values are"
    ):
        PoolLauncher(devices=0)
    assert PoolLauncher(devices="cpu").devices == ["cpu"]


@pytest.mark.parametrize("devices", [["gpu1"], ["auto", 0], [], ["cuda:1"], None, "gpu", 1.5])
def test_bad_devices_are_refused_with_the_allowed_values(devices):
    from hydra_plugins.sweeper_pool.launcher import PoolLauncher

    with pytest.raises(
        ValueError, match=r"hydra.launcher.devices=.* is invalid: allowed values are \[auto\], \[cpu\]"
    ):
        PoolLauncher(devices=devices)


@pytest.mark.parametrize(
    "devices, named", [("cpu", ["cpu"]), (0, ["0"]), ("auto", ["auto"]), ([0, 1], ["0", "1"])]
)
def test_one_device_may_be_given_without_a_list(devices, named, monkeypatch):
    from hydra_plugins.sweeper_pool.launcher import PoolLauncher

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)

    assert PoolLauncher(devices=devices).devices == named

"""Grids on SLURM: the launcher presets, and real sweeps on the throw-away cluster of .ci/slurm.

Without a cluster, the first tests still check what each preset hands to submitit (captured, as
hydra-submitit-launcher's own tests do) and the packing machinery. The `slurm` tests submit real
grids of tiny trainings through `python -m sweeper -m hydra/launcher=...` and read every job's
run record; they skip when no test cluster answers (see tests/slurm_helpers.py).
"""

import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import submitit
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from submitit.core.utils import UncompletedJobError
from submitit.slurm.test_slurm import mocked_slurm

from hydra_plugins.sweeper_launcher.launcher import LOST, Pack
from tests.conftest import CONF, REPO, TINY, run_cli
from tests.slurm_helpers import (
    background_sweep,
    find_cluster,
    known_job_ids,
    metrics,
    read_json,
    slurm,
    submitit_logs,
    sweep_cmd,
    wait_until,
)
from tests.test_data import write_image_folder

REAL_EXECUTOR = submitit.AutoExecutor
RECORD = {"config.json", "job.json", "metrics.jsonl", "losses.npz", "summary.json", "checkpoint.pt"}
# slurm_gpu asks for 8 CPUs and 32 GB per task: more than the test node has
SMALL_TASKS = ["hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]


# ------------------------------------------------------------------ what the presets give submitit


class FakeExecutor:
    """Stands in for submitit.AutoExecutor: records what the launcher gives it, submits nothing."""

    made: list["FakeExecutor"] = []
    lose_next: set = set()  # array indices whose job ends without a result
    fail_next: set = set()  # array indices whose job raises in the task function (run_job returns it)
    crash_next: set = set()  # array indices whose job raises outside run_job (submitit re-raises it)

    def __init__(self, folder, cluster=None, **kwargs):
        self.init = {"folder": folder, "cluster": cluster, **kwargs}
        self.params = None
        self.arrays = []
        FakeExecutor.made.append(self)

    def update_parameters(self, **kwargs):
        assert self.params is None, "update_parameters called twice"
        self.params = kwargs

    def map_array(self, fn, *iterables):
        calls = list(zip(*iterables, strict=True))
        self.arrays.append((fn, calls))
        return [FakeJob(fn, args, i, job_id=f"12_{i}") for i, args in enumerate(calls)]


class FakeJob:
    def __init__(self, fn, args, index, job_id):
        self.fn, self.args, self.index, self.job_id = fn, args, index, job_id
        self.paths = SimpleNamespace(stderr=Path("/cluster/sweep/.submitit/12_1/12_1_0_log.err"))

    def results(self):
        if self.index in FakeExecutor.lose_next:
            raise UncompletedJobError(
                "Job 12_1 (task: 0) has not produced any output (state: CANCELLED by 0)"
            )
        if self.index in FakeExecutor.crash_next:
            raise submitit.core.utils.FailedJobError("Job (task=0) failed during processing with trace: ...")
        failed = self.index in FakeExecutor.fail_next
        if type(self.fn).__name__ == "Pack":  # (Hydra's plugin scan re-executes the module: no isinstance)
            return [[_done(call[0], failed) for call in self.args[0]]]
        return [_done(self.args[0], failed)]


def _done(overrides, failed=False):
    if failed:  # what Hydra's run_job returns for a task function that raised
        return JobReturn(
            overrides=overrides, status=JobStatus.FAILED, _return_value=ZeroDivisionError("division by zero")
        )
    return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value="completed")


@pytest.fixture
def fake_submitit(monkeypatch):
    FakeExecutor.made, FakeExecutor.lose_next, FakeExecutor.fail_next, FakeExecutor.crash_next = (
        [],
        set(),
        set(),
        set(),
    )
    monkeypatch.setattr(submitit, "AutoExecutor", FakeExecutor)
    return FakeExecutor


def launch(preset: str, *overrides: str, sweep_dir: Path, jobs: int = 6):
    """Compose the real config with `hydra/launcher=preset`, instantiate the launcher as Hydra
    does (Plugins), and launch a `jobs`-job grid: what `python -m sweeper -m` does after validation."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(
            config_name="config",
            overrides=[f"hydra/launcher={preset}", *overrides, f"hydra.sweep.dir={sweep_dir}"],
            return_hydra_config=True,
        )
    launcher = Plugins.instance().instantiate_launcher(hydra_context=None, task_function=print, config=cfg)
    grid = [[f"lr=0.{i + 1}"] for i in range(jobs)]
    return launcher, launcher.launch(grid, initial_job_idx=0), grid


UPSTREAM_SLURM = {  # hydra-submitit-launcher's submitit_slurm defaults, as they reach submitit
    "timeout_min": 60,
    "cpus_per_task": None,
    "gpus_per_node": None,
    "tasks_per_node": 1,
    "mem_gb": None,
    "nodes": 1,
    "name": "train",
    "stderr_to_stdout": False,
    "slurm_partition": None,
    "slurm_qos": None,
    "slurm_comment": None,
    "slurm_constraint": None,
    "slurm_exclude": None,
    "slurm_gres": None,
    "slurm_cpus_per_gpu": None,
    "slurm_gpus_per_task": None,
    "slurm_mem_per_gpu": None,
    "slurm_mem_per_cpu": None,
    "slurm_account": None,
    "slurm_signal_delay_s": 120,
    "slurm_additional_parameters": {},
    "slurm_array_parallelism": 256,
    "slurm_setup": None,
}
SLURM_GPU = {
    **UPSTREAM_SLURM,
    "timeout_min": 180,
    "cpus_per_task": 8,
    "gpus_per_node": 1,
    "mem_gb": 32,
    "slurm_additional_parameters": {"requeue": True},
    "slurm_array_parallelism": 64,
    "slurm_setup": ["export OMP_NUM_THREADS=8"],
}


@pytest.mark.parametrize(
    ("preset", "overrides", "init", "params", "per_task"),
    [
        pytest.param(
            "submitit_slurm",
            ["hydra.launcher.partition=debug", "hydra.launcher.timeout_min=5"],
            {"cluster": "slurm", "slurm_max_num_timeout": 0},
            {**UPSTREAM_SLURM, "slurm_partition": "debug", "timeout_min": 5},
            1,
            id="submitit_slurm",
        ),
        pytest.param(
            "slurm_gpu",
            [],
            {"cluster": "slurm", "slurm_max_num_timeout": 5},
            SLURM_GPU,
            1,
            id="slurm_gpu",
        ),
        pytest.param(
            "slurm_gpu",
            [
                "hydra.launcher.partition=gpu",
                "hydra.launcher.cpus_per_task=4",
                "hydra.launcher.account=lab42",
                "hydra.launcher.timeout_min=30",
                "hydra.launcher.array_parallelism=8",
            ],
            {"cluster": "slurm", "slurm_max_num_timeout": 5},
            {
                **SLURM_GPU,
                "slurm_partition": "gpu",
                "cpus_per_task": 4,
                "slurm_setup": ["export OMP_NUM_THREADS=4"],  # follows cpus_per_task
                "slurm_account": "lab42",
                "timeout_min": 30,
                "slurm_array_parallelism": 8,
            },
            1,
            id="slurm_gpu+overrides",
        ),
        pytest.param(
            "slurm_gpu_packed",
            [],
            {"cluster": "slurm", "slurm_max_num_timeout": 5},
            SLURM_GPU,  # jobs_per_task is the launcher's, not submitit's
            4,
            id="slurm_gpu_packed",
        ),
        pytest.param(
            "slurm_gpu_packed",
            ["hydra.launcher.jobs_per_task=3"],
            {"cluster": "slurm", "slurm_max_num_timeout": 5},
            SLURM_GPU,
            3,
            id="slurm_gpu_packed+jobs_per_task",
        ),
        pytest.param(
            "submitit_local",
            [],
            {"cluster": "local"},
            {k: v for k, v in UPSTREAM_SLURM.items() if not k.startswith("slurm_")},
            1,
            id="submitit_local",
        ),
    ],
)
def test_a_preset_gives_submitit_exactly_these_parameters(
    fake_submitit, tmp_path, preset, overrides, init, params, per_task
):
    sweep_dir = tmp_path / "sweep"
    _, results, grid = launch(preset, *overrides, sweep_dir=sweep_dir, jobs=6)

    [executor] = fake_submitit.made
    assert executor.init == {"folder": f"{sweep_dir}/.submitit/%j", **init}
    assert executor.params == params
    [(fn, calls)] = executor.arrays  # the whole grid as one array
    if per_task == 1:
        assert [call[0] for call in calls] == grid  # one array task per job
        assert [call[2] for call in calls] == list(range(6))  # job numbers
    else:
        assert type(fn).__name__ == "Pack"
        tasks = [[job[0] for job in call[0]] for call in calls]
        assert tasks == [grid[i : i + per_task] for i in range(0, 6, per_task)]
    assert [r.overrides for r in results] == grid and all(r.return_value == "completed" for r in results)


def test_the_sbatch_script_of_the_packed_gpu_preset(fake_submitit, tmp_path):
    """What submitit makes of the captured parameters: the script that would reach sbatch."""
    sweep_dir = tmp_path / "sweep"
    launch("slurm_gpu_packed", "hydra.launcher.partition=gpu", sweep_dir=sweep_dir, jobs=10)
    [captured] = fake_submitit.made
    init = {k: v for k, v in captured.init.items() if k != "cluster"}
    # submitit's own stand-in for a cluster (as its tests make sbatch scripts): the executor
    # otherwise refuses to exist where `srun` is not on PATH.
    with mocked_slurm():
        real = REAL_EXECUTOR(cluster="slurm", **init)
    real.update_parameters(**captured.params)
    real._executor.parameters["map_count"] = len(captured.arrays[0][1])  # as map_array sets it
    script = real._executor._make_submission_file_text("python -u -m submitit.core._submit", "uid")
    for line in (
        "#SBATCH --array=0-2%3",  # 10 jobs, 4 per task: 3 array tasks
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32GB",
        "#SBATCH --time=180",
        "#SBATCH --requeue",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --job-name=train",
        "export OMP_NUM_THREADS=8",
        f"#SBATCH --output={sweep_dir}/.submitit/%A_%a/%A_%a_0_log.out",
    ):
        assert line in script.splitlines(), f"{line!r} not in\n{script}"


def test_a_job_that_ends_without_a_result_does_not_abort_the_sweep(fake_submitit, tmp_path, caplog):
    fake_submitit.lose_next = {1}
    with caplog.at_level(logging.INFO):
        _, results, grid = launch("slurm_gpu", sweep_dir=tmp_path / "sweep", jobs=3)
    # every job returns, so Hydra goes on to the sweep callback's summary, which reads the records
    assert [r.status for r in results] == [JobStatus.COMPLETED] * 3
    assert [r.return_value for r in results] == ["completed", LOST, "completed"]
    assert "job #1 (lr=0.2) ended without a result: UncompletedJobError" in caplog.text
    assert "CANCELLED" in caplog.text and "12_1_0_log.err" in caplog.text


@pytest.mark.parametrize("preset", ["slurm_gpu", "slurm_gpu_packed"])
def test_a_job_that_failed_comes_back_failed_with_its_own_exception(fake_submitit, tmp_path, preset):
    """As Hydra's launchers return it, for the sweeper to raise: not a stand-in that says
    `completed`. Only a job without any result (cancelled) is `lost`."""
    fake_submitit.fail_next, fake_submitit.crash_next = {0}, {1}
    fake_submitit.lose_next = {2} if preset == "slurm_gpu" else set()
    _, results, _ = launch(preset, "hydra.launcher.jobs_per_task=1", sweep_dir=tmp_path / "sweep", jobs=4)
    assert [r.status for r in results[:2]] == [JobStatus.FAILED] * 2
    with pytest.raises(ZeroDivisionError):
        _ = results[0].return_value  # what Hydra's sweeper does with each return
    with pytest.raises(submitit.core.utils.FailedJobError):
        _ = results[1].return_value
    if preset == "slurm_gpu":
        assert (results[2].status, results[2].return_value) == (JobStatus.COMPLETED, LOST)
    assert (results[3].status, results[3].return_value) == (JobStatus.COMPLETED, "completed")


def test_a_failing_job_on_submitit_local_fails_the_sweep_as_on_hydras_launchers(hydra_sweep_runner, tmp_path):
    """A real local submitit job whose task raises: the sweep raises the job's own exception,
    as it does on Hydra's basic launcher (the task is a local function: the job's process
    gets it by value, without importing the test modules)."""

    def task(cfg):
        return 1 / cfg.a

    sweep = hydra_sweep_runner(
        calling_file=None,
        calling_module="hydra.test_utils.a_module",
        task_function=task,
        config_path="configs",
        config_name="compose",
        overrides=["hydra/launcher=sweeper_local", "hydra.launcher.timeout_min=2", "+a=1,0"],
        temp_dir=tmp_path,
    )
    with pytest.raises(ZeroDivisionError), sweep:
        pass


def test_an_option_sbatch_refuses_is_one_line_and_exit_2(fake_submitit, tmp_path, monkeypatch, capsys):
    def refused(self, fn, *iterables):
        print("sbatch: error: invalid partition specified: nopart", file=sys.stderr)  # as submitit does
        raise submitit.core.utils.FailedJobError("sbatch: error: invalid partition specified: nopart")

    monkeypatch.setattr(FakeExecutor, "map_array", refused)
    with pytest.raises(SystemExit) as stop:
        launch("slurm_gpu", "hydra.launcher.partition=nopart", sweep_dir=tmp_path / "sweep", jobs=2)
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        "error: sbatch refused the job array of jobs 0-1, which was not submitted: "
        "sbatch: error: invalid partition specified: nopart\n"
    )  # once: submitit's own print of it is not repeated


@pytest.mark.parametrize("preset", ["submitit_slurm", "submitit_local"])
def test_the_grid_sweeper_runs_upstreams_submitit_launchers_through_the_projects_class(
    preset, fake_submitit, tmp_path
):
    # upstream's class stops a sweep, with a traceback and no summary, at a job without a result
    from hydra_plugins.sweeper_grid.grid import _with_project_launcher

    upstream, _, _ = launch(preset, sweep_dir=tmp_path / "sweep", jobs=1)
    assert type(upstream).__module__ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher"
    ours = _with_project_launcher(upstream, upstream.hydra_context, upstream.task_function, upstream.config)
    assert (
        type(ours).__name__
        == {"submitit_slurm": "SweeperSlurmLauncher", "submitit_local": "SweeperLocalLauncher"}[preset]
    )
    assert ours.params == upstream.params and ours.jobs_per_task == 1 and ours.config is upstream.config


def test_packing_needs_a_positive_number_of_jobs_per_task(fake_submitit, tmp_path):
    with pytest.raises(Exception, match="jobs_per_task=0 is invalid"):
        launch("slurm_gpu_packed", "hydra.launcher.jobs_per_task=0", sweep_dir=tmp_path)


def test_a_pack_runs_its_jobs_at_once_in_their_own_processes_on_the_tasks_gpu(monkeypatch):
    class ReportingJob:
        """Stands in for the Hydra launcher inside a pack: reports where and when it ran (a local
        class, so that the job processes get it by value without importing the test modules)."""

        def __call__(self, overrides, job_dir_key, num, job_id, singletons):
            if overrides == ["crash"]:
                os._exit(3)  # killed without a word, as by the OOM killer
            if overrides == ["raise"]:
                raise ValueError("boom")
            start = time.time()
            time.sleep(1.5)
            where = (os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("OMP_NUM_THREADS"))
            return JobReturn(
                overrides=overrides, status=JobStatus.COMPLETED, _return_value=(*where, start, time.time())
            )

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")
    monkeypatch.setenv("OMP_NUM_THREADS", "99")  # restored after the test: the pack sets it
    calls = [([name], "hydra.sweep.dir", i, f"job_id_for_{i}", {}) for i, name in enumerate("ab")]
    calls += [
        (["crash"], "hydra.sweep.dir", 2, "job_id_for_2", {}),
        (["raise"], "hydra.sweep.dir", 3, "x", {}),
    ]
    pack = Pack(ReportingJob())

    a, b, crashed, raised = pack(calls)

    assert a.status == b.status == JobStatus.COMPLETED
    (pid_a, gpus_a, threads_a, start_a, end_a), (pid_b, gpus_b, threads_b, start_b, end_b) = (
        a.return_value,
        b.return_value,
    )
    assert len({pid_a, pid_b, os.getpid()}) == 3  # one process per job
    assert gpus_a == gpus_b == "0"  # both see the task's GPU
    assert threads_a == threads_b == "2"  # the task's 8 CPUs split over its 4 jobs
    assert max(start_a, start_b) < min(end_a, end_b)  # they ran at the same time
    assert crashed.status == JobStatus.FAILED and "exited with code 3" in str(crashed._return_value)
    assert raised.status == JobStatus.FAILED and isinstance(raised._return_value, ValueError)
    # submitit's checkpoint hook (preemption, timeout) requeues the same pack
    again = pack.checkpoint(calls)
    assert again.function is pack and again.args == (calls,)


def test_submitit_local_runs_a_grid_on_this_machine(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "-m",
        "hydra/launcher=submitit_local",
        *TINY,
        "lr=0.1,0.05",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "2 jobs: 2 completed" in result.stdout
    for num in (0, 1):
        run = sweep_dir / str(num)
        assert {p.name for p in run.iterdir()} >= RECORD
        assert read_json(run / "job.json")["job_num"] == num


# ------------------------------------------------------------------ on a real SLURM cluster


@pytest.fixture(scope="session")
def cluster():
    env, reason = find_cluster()
    if env is None:
        if os.environ.get("SWEEPER_REQUIRE_SLURM") == "1":
            pytest.fail(f"SWEEPER_REQUIRE_SLURM=1 but no test cluster: {reason}")
        pytest.skip(reason)
    return env


def array_task(job: dict) -> str:
    """The SLURM id of one array task: `ARRAY_TASK`. (Its raw job id is the array's own id for
    one of the tasks, and `scancel`/`scontrol requeue` of that id would hit the whole array.)"""
    if job["slurm_array_job_id"]:
        return f"{job['slurm_array_job_id']}_{job['slurm_array_task_id']}"
    return job["slurm_job_id"]


def broken_image_folder(root: Path) -> Path:
    """A well-laid-out tree (the pre-check passes it) with one corrupt image, found as a job loads it."""
    write_image_folder(root)
    next((root / "train" / "cat").glob("*.png")).write_bytes(b"garbage")
    return root


def image_args(tmp_path: Path, roots: str) -> list[str]:
    return [
        "data=cifar10",
        f"data.root={roots}",
        "data.download=false",
        f"data.cache_dir={tmp_path / 'cache'}",
        "trainer.epochs=1",
        "model.channels=4",
        "model.units=[16]",
    ]


@pytest.mark.slurm
def test_a_grid_goes_out_as_one_job_array_and_a_failing_job_is_recorded(cluster, tmp_path):
    broken, good = broken_image_folder(tmp_path / "broken"), tmp_path / "good"
    write_image_folder(good)
    sweep_dir = tmp_path / "sweep"
    # jobs 0, 1 raise while decoding the corrupt folder; jobs 2, 3 train on the good one
    result = sweep_cmd(
        cluster, tmp_path, "hydra/launcher=submitit_slurm", *image_args(tmp_path, f"{broken},{good}"),
        "lr=0.1,0.05", f"hydra.sweep.dir={sweep_dir}",
    )  # fmt: skip

    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "4 jobs: 2 completed, 2 failed" in result.stdout
    jobs = [read_json(sweep_dir / str(n) / "job.json") for n in range(4)]
    summaries = [read_json(sweep_dir / str(n) / "summary.json") for n in range(4)]
    assert len({j["slurm_array_job_id"] for j in jobs}) == 1 and jobs[0]["slurm_array_job_id"]  # one array
    assert [j["slurm_array_task_id"] for j in jobs] == ["0", "1", "2", "3"]
    assert [j["job_num"] for j in jobs] == [0, 1, 2, 3]
    assert len({j["slurm_job_id"] for j in jobs}) == 4
    assert [s["slurm_job_id"] for s in summaries] == [j["slurm_job_id"] for j in jobs]
    assert [s["status"] for s in summaries] == ["failed", "failed", "completed", "completed"]
    for failed in summaries[:2]:
        assert "UnidentifiedImageError" in failed["error"] and "Traceback" in failed["traceback"]
    for n in (2, 3):
        assert {p.name for p in (sweep_dir / str(n)).iterdir()} >= RECORD
        assert [r["epoch"] for r in metrics(sweep_dir / str(n))] == [1]
    assert read_json(sweep_dir / "sweep.json")["launcher"] == "submitit_slurm"
    # each job's id as submitted, written before any job had a record
    assert read_json(sweep_dir / "slurm_jobs.json") == {
        "jobs": {str(j["job_num"]): array_task(j) for j in jobs}
    }

    # `python -m analysis status`: each job's row names its state and the id squeue shows (ARRAY_TASK)
    status = subprocess.run(
        [sys.executable, "-m", "analysis", "status", str(sweep_dir)],
        cwd=tmp_path, env={**cluster, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    for job, summary in zip(jobs, summaries, strict=True):
        row = rf"^\s*{job['job_num']}\s+{summary['status']}\s.*\s{re.escape(array_task(job))}\s"
        assert re.search(row, status.stdout, re.MULTILINE), status.stdout + status.stderr


@pytest.mark.slurm
def test_a_bad_value_never_reaches_the_queue(cluster, tmp_path):
    before = known_job_ids(cluster)
    sweep_dir = tmp_path / "sweep"
    result = sweep_cmd(
        cluster, tmp_path, "hydra/launcher=submitit_slurm", *TINY, "lr=0.1,-1", f"hydra.sweep.dir={sweep_dir}"
    )
    assert result.returncode == 2
    assert "error: job 1 (" in result.stderr and "lr=-1 is invalid" in result.stderr
    assert not sweep_dir.exists()  # refused before Hydra made the sweep dir, let alone .submitit
    assert known_job_ids(cluster) == before  # nothing was submitted


@pytest.mark.slurm
def test_an_option_sbatch_refuses_is_one_line_and_nothing_is_queued(cluster, tmp_path):
    before = known_job_ids(cluster)
    result = sweep_cmd(
        cluster, tmp_path, "hydra/launcher=submitit_slurm", "hydra.launcher.partition=nopart", *TINY,
        "lr=0.1,0.05", f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )  # fmt: skip
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "error: sbatch refused the job array of jobs 0-1, which was not submitted: sbatch: error:"
        )
    )
    assert "Traceback" not in result.stderr and "nopart" in result.stderr.splitlines()[-1]
    assert known_job_ids(cluster) == before


@pytest.mark.slurm
def test_a_job_refused_on_its_node_is_recorded_as_failed_with_the_reason(cluster, tmp_path):
    # The login node does not check a SLURM job's GPU (it may have none); the job's node does. It
    # was reported as "missing: no record", its reason only in the SLURM log.
    sweep_dir = tmp_path / "sweep"
    result = sweep_cmd(
        cluster,
        tmp_path,
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.gpus_per_node=1",
        *TINY,
        "trainer.device=cuda",
        "lr=0.1",
        f"hydra.sweep.dir={sweep_dir}",
    )  # fmt: skip  (the test node's GPUs are fake: torch sees none)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "1 job: 0 completed, 1 failed" in result.stdout
    summary = read_json(sweep_dir / "0" / "summary.json")
    assert summary["status"] == "failed" and summary["error"].startswith(
        "ConfigError: trainer.device=cuda is invalid here"
    )


@pytest.mark.slurm
def test_rerunning_a_sweep_skips_completed_runs_reruns_failed_ones_and_refuses_another_grid(
    cluster, tmp_path
):
    good, fixable = tmp_path / "good", broken_image_folder(tmp_path / "fixable")
    write_image_folder(good)
    sweep_dir = tmp_path / "sweep"
    args = [
        "hydra/launcher=submitit_slurm",
        *image_args(tmp_path, f"{good},{fixable}"),
        f"hydra.sweep.dir={sweep_dir}",
    ]
    first = sweep_cmd(cluster, tmp_path, *args)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    assert "2 jobs: 1 completed, 1 failed" in first.stdout
    done, failed = sweep_dir / "0", sweep_dir / "1"
    stamps = {p: p.stat().st_mtime_ns for p in done.iterdir() if p.name in RECORD}
    assert len(stamps) == len(RECORD)
    first_job = read_json(failed / "job.json")

    shutil.rmtree(fixable)
    write_image_folder(fixable)  # the data is fixed; the same command again
    again = sweep_cmd(cluster, tmp_path, *args)

    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "2 jobs: 2 completed" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # the completed run is untouched
    assert "already completed, skipping" in submitit_logs(sweep_dir)
    assert read_json(failed / "summary.json")["status"] == "completed"
    assert read_json(failed / "attempts" / "1" / "summary.json")["status"] == "failed"  # set aside
    rerun_job = read_json(failed / "job.json")
    assert rerun_job["slurm_job_id"] != first_job["slurm_job_id"] and rerun_job["restarts"] == 1

    before = known_job_ids(cluster)
    other = sweep_cmd(cluster, tmp_path, *args, "lr=0.1,0.05")
    assert other.returncode == 2
    assert "holds a sweep of another grid" in other.stderr
    assert known_job_ids(cluster) == before  # refused before anything was submitted


@pytest.mark.slurm
def test_trainer_resume_false_reruns_the_whole_sweep(cluster, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["hydra/launcher=submitit_slurm", *TINY, "lr=0.1,0.05", f"hydra.sweep.dir={sweep_dir}"]
    assert sweep_cmd(cluster, tmp_path, *args).returncode == 0
    before = [read_json(sweep_dir / str(n) / "job.json")["slurm_job_id"] for n in (0, 1)]

    again = sweep_cmd(cluster, tmp_path, *args, "trainer.resume=false")

    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for n, old_id in zip((0, 1), before, strict=True):
        run = sweep_dir / str(n)
        assert read_json(run / "attempts" / "1" / "job.json")["slurm_job_id"] == old_id  # set aside
        assert read_json(run / "job.json")["slurm_job_id"] != old_id  # trained again
        assert read_json(run / "summary.json")["status"] == "completed"


@pytest.mark.slurm
def test_a_requeued_or_preempted_job_resumes_without_losing_or_repeating_an_epoch(cluster, tmp_path):
    """Job 0 is requeued by SLURM (`scontrol requeue`, as an admin or a node failure would);
    job 1 gets the preemption signal, on which submitit's checkpoint hook requeues it itself."""
    sweep_dir, log = tmp_path / "sweep", tmp_path / "sweep.log"
    # A requeued job trains on for KillWait (+2) seconds after SIGTERM, which submitit ignores:
    # 40 epochs of about 0.5 s leave it far from done when the test interrupts it after 2.
    epochs = 40
    with background_sweep(
        cluster, tmp_path, "hydra/launcher=slurm_gpu", *SMALL_TASKS, "data=synthetic", f"data.cache_dir={tmp_path}/cache", "data.generated_train=2000",
        "data.generated_test=200", f"trainer.epochs={epochs}", "model.channels=16", "model.units=[16]", "lr=0.1,0.05",
        f"hydra.sweep.dir={sweep_dir}", log=log,
    ) as proc:  # fmt: skip
        interrupted = {}
        for num, how in ((0, ["scontrol", "requeue"]), (1, ["scancel", "--signal=USR2"])):
            run = sweep_dir / str(num)
            wait_until(lambda run=run: len(metrics(run)) >= 2, 240, f"2 epochs of job {num}", proc, log)
            slurm(cluster, *how, array_task(read_json(run / "job.json")))
            interrupted[num] = len(metrics(run))
    assert "2 jobs: 2 completed" in log.read_text()
    assert all(2 <= n < epochs for n in interrupted.values()), interrupted  # stopped mid-run
    for num in (0, 1):
        run = sweep_dir / str(num)
        rows = metrics(run)
        assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))  # no gap, no duplicate
        assert [r["samples"] for r in rows] == [2000 * e for e in range(1, epochs + 1)]
        restarts = read_json(run / "job.json")["restarts"]
        assert restarts >= 1, f"job {num} finished before SLURM killed it: the test needs longer jobs"
        summary = read_json(run / "summary.json")
        assert summary["status"] == "completed" and summary["epochs_done"] == epochs
    assert "Requeued job" in submitit_logs(sweep_dir)  # job 1: by submitit's checkpoint hook


@pytest.mark.slurm
def test_packed_jobs_share_one_array_task_and_resume_together_after_preemption(cluster, tmp_path):
    sweep_dir, log = tmp_path / "sweep", tmp_path / "sweep.log"
    epochs = 12
    with background_sweep(
        cluster, tmp_path, "hydra/launcher=slurm_gpu_packed", "hydra.launcher.jobs_per_task=2", *SMALL_TASKS,
        "data=synthetic", f"data.cache_dir={tmp_path}/cache", "data.generated_train=2000", "data.generated_test=200", f"trainer.epochs={epochs}", "model.channels=16",
        "model.units=[16]", "lr=0.1,0.05,0.02", f"hydra.sweep.dir={sweep_dir}", log=log,
    ) as proc:  # fmt: skip
        # preempt the task of jobs 0 and 1: submitit's hook on the pack requeues it
        for num in (0, 1):
            run = sweep_dir / str(num)
            wait_until(lambda run=run: len(metrics(run)) >= 2, 240, f"2 epochs of job {num}", proc, log)
        slurm(cluster, "scancel", "--signal=USR2", array_task(read_json(sweep_dir / "0" / "job.json")))
        interrupted = [len(metrics(sweep_dir / str(num))) for num in (0, 1)]
    assert "3 jobs: 3 completed" in log.read_text()
    assert all(n < epochs for n in interrupted), interrupted

    jobs = [read_json(sweep_dir / str(n) / "job.json") for n in range(3)]
    summaries = [read_json(sweep_dir / str(n) / "summary.json") for n in range(3)]
    assert [j["job_num"] for j in jobs] == [0, 1, 2]
    assert len({j["slurm_array_job_id"] for j in jobs}) == 1  # one array ...
    assert [j["slurm_array_task_id"] for j in jobs] == ["0", "0", "1"]  # ... of 2 tasks: jobs 0, 1 in one
    assert jobs[0]["slurm_job_id"] == jobs[1]["slurm_job_id"] != jobs[2]["slurm_job_id"]
    assert jobs[0]["pid"] != jobs[1]["pid"]  # in their own processes ...
    assert max(j["started_at"] for j in jobs[:2]) <= min(
        s["finished_at"] for s in summaries[:2]
    )  # ... at once
    assert [j["restarts"] for j in jobs] == [1, 1, 0]  # the preempted pack came back as a whole
    for n in range(3):
        run = sweep_dir / str(n)
        assert summaries[n]["status"] == "completed"
        assert [r["epoch"] for r in metrics(run)] == list(range(1, epochs + 1))  # no gap, no duplicate
        assert {p.name for p in run.iterdir()} >= RECORD
    assert read_json(sweep_dir / "sweep.json")["launcher"] == "slurm_gpu_packed"
    logs = submitit_logs(sweep_dir)
    assert "Requeued job" in logs
    # the task's one (fake) GPU is the GPU of both its jobs
    assert "jobs 0, 1 packed in this task, one process each, 1 CPU threads each, GPUs 0" in logs


def test_a_rerun_while_the_earlier_array_is_still_queued_is_refused(tmp_path, monkeypatch, capsys):
    # It put a second array on the queue for the same run dirs. squeue is faked on PATH.
    from sweeper import submitted
    from sweeper.submitted import refuse_if_still_queued

    submitted.record(tmp_path, {0: "27_0", 1: "27_1", 2: "27_2"})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    squeue.write_text("#!/bin/sh\nprintf '27_1\\n27_2\\n99_0\\n'\n")  # -r: one line per array task
    squeue.chmod(0o755)
    with pytest.raises(SystemExit) as stop:
        refuse_if_still_queued(tmp_path, [0, 1, 2])
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        "error: 2 job(s) of this sweep are still in SLURM's queue from an earlier submission (27_1, 27_2): "
        "wait until they end, or scancel 27, then rerun\n"
    )
    refuse_if_still_queued(tmp_path, [0])  # job 0 has left the queue: its rerun goes ahead
    (tmp_path / ".submitit" / "27_1").mkdir(parents=True)
    (tmp_path / ".submitit" / "27_1" / "27_1_0_result.pkl").write_bytes(b"")  # answered, still exiting
    refuse_if_still_queued(tmp_path, [1])
    squeue.write_text("#!/bin/sh\nexit 1\n")  # squeue failing: the check stands aside
    refuse_if_still_queued(tmp_path, [1, 2])

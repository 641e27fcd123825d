"""launcher=slurm|local without a cluster: configs, the optional local group, GPU assignment, refusal messages.

The same behaviour against a real Slurm is in test_slurm.py; launcher=local end to end in test_sweep_e2e.py.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from tor_exp.config import config_dir
from tor_exp.config import register_configs
from tor_exp.launcher import (NEVER_STARTS, LocalLauncher, PlannedJob, check_gpus_usable, failure_reason,
                              gpus_per_job, job_slots, never_starts_message, refusal_message, results_or_exit,
                              visible_gpus)
from tor_exp.records.results import config_hash

ROOT = Path(__file__).resolve().parents[2]
CONF = Path(config_dir())


def _compose(overrides: list[str], conf: Path = CONF):
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            return compose(config_name="config", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def test_local_slurm_script_parses_and_refuses_without_a_command():
    script = ROOT / "launchers" / "local_slurm.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and out.stderr.strip() == "error: usage: launchers/local_slurm.sh start|stop|status"


def test_environment_variable_wrappers_are_gone():
    """Per-cluster settings live in conf/local/, not in wrapper scripts reading TOR_EXP_* variables."""
    scripts = sorted(p.name for p in (ROOT / "launchers").glob("*.sh"))
    assert scripts == ["gpu_bench.sh", "install_cpu_kernels.sh", "local_slurm.sh", "prepare_gpu_carry.sh"]
    assert "TOR_EXP_" not in (ROOT / "launchers" / "local_slurm.sh").read_text()
    assert "TOR_EXP_PARTITION" not in (ROOT / "docs" / "sweeps.md").read_text()


def test_slurm_launcher_requeues_timeouts_and_reads_the_local_group(tmp_path):
    cfg = _compose(["launcher=slurm", "~local"])  # ~local: whatever this machine's conf/local/default.yaml says
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.tor_exp_launcher.launchers.SlurmLauncher"
    assert launcher["max_num_timeout"] == 3 and launcher["partition"] is None and launcher["setup"] == []
    assert (launcher["gpus_per_node"], launcher["timeout_min"]) == (1, 240)

    # the optional, untracked conf/local/default.yaml: its local.slurm.* become the launcher's keys, the command
    # line still wins, and a job's config hash does not see them (editing them never reruns finished jobs)
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "local").mkdir(exist_ok=True)
    (conf / "local" / "default.yaml").write_text(
        "# @package _global_\nlocal:\n  slurm:\n    partition: gpu\n    account: proj\n    qos: high\n"
        "    setup: ['module load cuda']\n    gpus_per_node: 2\n")
    with_local = _compose(["launcher=slurm", "hydra.launcher.qos=low"], conf)
    launcher = OmegaConf.to_container(with_local.hydra.launcher, resolve=True)
    assert (launcher["partition"], launcher["account"], launcher["qos"]) == ("gpu", "proj", "low")
    assert launcher["setup"] == ["module load cuda"] and launcher["gpus_per_node"] == 2
    assert launcher["mem_gb"] == 64  # not in the local file: the launcher file's default

    def job_hash(c) -> str:
        job = OmegaConf.masked_copy(c, [k for k in c if k != "hydra"])
        return config_hash(OmegaConf.to_container(job, resolve=True))

    assert job_hash(with_local) == job_hash(_compose(["launcher=slurm", "~local"]))
    assert job_hash(_compose(["launcher=slurm", "~local", "eval.limit=3"])) != job_hash(with_local)


def test_local_launcher_config():
    launcher = OmegaConf.to_container(_compose(["launcher=local", "~local"]).hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.tor_exp_launcher.launchers.LocalLauncher"
    assert launcher["gpus_per_node"] is None and launcher["array_parallelism"] is None


def test_local_settings_are_git_ignored_and_the_example_is_not():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", "conf/local/default.yaml"], cwd=ROOT)
    example = subprocess.run(["git", "check-ignore", "-q", "conf/local/example.yaml"], cwd=ROOT)
    assert (ignored.returncode, example.returncode) == (0, 1)


def test_the_example_local_file_composes():
    cfg = _compose(["launcher=slurm", "local=example"])
    assert cfg.hydra.launcher.partition == "gpu" and list(cfg.hydra.launcher.setup)[0] == "module load cuda/12.4"


# ----------------------------------------------------------------------------------------------- GPUs (local)
def test_visible_gpus_reads_cuda_visible_devices_like_cuda():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-1a,GPU-2b"}) == ["GPU-1a", "GPU-2b"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,-1,1"}) == ["0"]  # CUDA stops at an invalid entry


def _exit(fn, capsys, *args) -> str:
    with pytest.raises(SystemExit) as exc:
        fn(*args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err


def test_gpus_per_job_defaults_and_refusals(capsys):
    four = ["0", "1", "2", "3"]
    assert gpus_per_job(None, four, {"auto"}) == 1  # a GPU machine: one GPU per job by default
    assert gpus_per_job(None, four, {"cpu"}) == 0  # CPU jobs asked for explicitly
    assert gpus_per_job(None, [], {"auto"}) == 0  # no GPU: CPU jobs
    assert gpus_per_job(2, four, {"cuda"}) == 2
    # never silently on the CPU of a GPU machine, never GPUs that are not there
    assert "would run on the CPU" in _exit(gpus_per_job, capsys, 0, four, {"auto"})
    assert "hydra.launcher.gpus_per_node=1: no GPU is visible" in _exit(gpus_per_job, capsys, 1, [], {"auto"})
    assert "only 4 GPU(s) visible" in _exit(gpus_per_job, capsys, 5, four, {"auto"})
    assert _exit(gpus_per_job, capsys, None, [], {"cuda"}).startswith("error: device=cuda: no GPU is visible")


def test_job_slots_are_disjoint_gpu_sets():
    assert job_slots(["0", "1", "2", "3"], 1, None) == [("0",), ("1",), ("2",), ("3",)]
    assert job_slots(["0", "1", "2", "3", "4"], 2, None) == [("0", "1"), ("2", "3")]  # GPU 4 left idle
    assert job_slots(["0", "1", "2", "3"], 1, 1) == [("0",)]  # array_parallelism=1: one job at a time
    assert job_slots([], 0, None, cpus_per_task=2, cpu_count=8) == [()] * 4
    assert job_slots([], 0, None, cpus_per_task=16, cpu_count=8) == [()]


class _FakeJob:
    """A submitted job that ends after a few polls; records what ran when."""

    def __init__(self, log: list, env: str, num: int, polls: int) -> None:
        self.log, self.env, self.num, self.polls = log, env, num, polls
        log.append(("start", num, env))

    def done(self) -> bool:
        self.polls -= 1
        if self.polls == 0:
            self.log.append(("end", self.num, self.env))
        return self.polls <= 0


class _FakeExecutor:
    def __init__(self, log: list) -> None:
        self.log, self.setup = log, []

    def update_parameters(self, **kwargs) -> None:
        self.setup = kwargs.get("local_setup", self.setup)

    def submit(self, fn, overrides, key, num, *rest) -> _FakeJob:
        env = next(line.split("=", 1)[1] for line in self.setup if line.startswith("export CUDA_VISIBLE_DEVICES="))
        return _FakeJob(self.log, env, num, polls=2 + num % 3)


def _planned(num: int, device: str = "auto") -> PlannedJob:
    return PlannedJob(num=num, overrides=[f"seed={num}"], device=device, out_dir=None, complete=False)


@pytest.mark.parametrize("visible,params,expected_parallel", [
    ("0,1,2", {}, 3),  # one job per GPU
    ("0,1,2", {"array_parallelism": 1}, 1),  # one at a time
    ("0,1,2,3", {"gpus_per_node": 2}, 2),  # two GPUs per job
])
def test_local_launcher_never_shares_a_gpu_and_runs_every_job(monkeypatch, visible, params, expected_parallel):
    """The scheduling loop: each started job gets its own GPU set; a set is reused only after its job ended."""
    log: list = []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    launcher = LocalLauncher(**{"submitit_folder": "unused", "cpus_per_task": 1, **params})
    launcher.poll_s = 0.0
    monkeypatch.setattr(LocalLauncher, "executor", lambda self, **kw: _FakeExecutor(log))
    handles = launcher.submit([_planned(n) for n in range(7)])
    while not all(handle.done() for handle in handles):  # the jobs still running when the last one started
        pass

    busy: dict[str, int] = {}
    most = 0
    for event, num, env in log:
        gpus = env.split(",")
        if event == "start":
            assert all(g not in busy for g in gpus), f"job {num} started on busy GPU(s) {env}"
            busy.update({g: num for g in gpus})
            most = max(most, len(busy) // len(gpus))
        else:
            for g in gpus:
                del busy[g]
    assert sorted(num for event, num, _ in log if event == "start") == list(range(7))
    assert most == expected_parallel and not busy


def test_a_job_given_a_gpu_that_torch_cannot_use_fails_instead_of_running_on_cpu(monkeypatch, capsys):
    import torch

    from tor_exp.errors import ConfigError

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    if torch.cuda.is_available():
        check_gpus_usable(3, "auto")  # a real GPU: nothing to refuse
    else:
        with pytest.raises(ConfigError, match="job #3 was given GPU.*sees no CUDA device"):
            check_gpus_usable(3, "auto")
    check_gpus_usable(3, "cpu")  # asked for the CPU: fine
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    check_gpus_usable(3, "auto")
    assert "[tor_exp] job #3: CUDA_VISIBLE_DEVICES=''" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------- Slurm messages
# sbatch's stderr as Slurm 22.05 prints it (recorded from launchers/local_slurm.sh's cluster)
SBATCH = {
    "partition": "sbatch: error: invalid partition specified: nope\n"
                 "sbatch: error: Batch job submission failed: Invalid partition name specified",
    "gpus_per_node": "sbatch: error: Invalid generic resource (gres) specification",
    "account": "sbatch: error: invalid account: blocked\n"
               "sbatch: error: Batch job submission failed: Invalid account or account/partition combination "
               "specified",
    "qos": "sbatch: error: Batch job submission failed: Invalid qos specification",
    "mem_gb": "sbatch: error: Memory specification can not be satisfied\n"
              "sbatch: error: Batch job submission failed: Requested node configuration is not available",
}


@pytest.mark.parametrize("key", sorted(SBATCH))
def test_each_sbatch_refusal_names_its_launcher_key(key):
    params = {"partition": "nope", "gpus_per_node": 1, "account": "blocked", "qos": "gold", "mem_gb": 999}
    message = refusal_message(SBATCH[key], params)
    assert message.startswith(f"hydra.launcher.{key}={params[key]}: ") and "\n" not in message


def test_a_partition_that_does_not_exist_is_named_before_what_sbatch_said():
    """sbatch checks a GPU request before the partition: with partition=nope and the default gpus_per_node=1 it
    says only 'Invalid generic resource'. The partition is the key to change first."""
    params = {"partition": "gpu,nope", "gpus_per_node": 1}
    message = refusal_message(SBATCH["gpus_per_node"], params, ["debug", "gpu"])
    assert message == "hydra.launcher.partition=gpu,nope: Slurm has no such partition (partitions here: debug, gpu)"
    # an existing partition: the GPU request is what to change
    message = refusal_message(SBATCH["gpus_per_node"], {"partition": "gpu", "gpus_per_node": 1}, ["debug", "gpu"])
    assert message.startswith("hydra.launcher.gpus_per_node=1: Slurm refused the GPU request")


def test_unknown_refusals_and_never_starting_jobs_stay_one_line():
    message = refusal_message("sbatch: error: Batch job submission failed: Something new\n", {})
    assert message.startswith("Slurm refused the job array: Batch job submission failed: Something new")
    assert "\n" not in message
    message = never_starts_message("PartitionConfig", {"cpus_per_task": 8, "mem_gb": 64, "gpus_per_node": 0})
    assert message.startswith("hydra.launcher.cpus_per_task=8, mem_gb=64, gpus_per_node=0: ")
    assert set(NEVER_STARTS["PartitionTimeLimit"]) == {"timeout_min"}


# ----------------------------------------------------------------------------------------------- failed jobs
class _Ended:
    """A job handle whose job has ended with ``outcome`` (a JobReturn, or what submitit raises)."""

    def __init__(self, num: int, outcome) -> None:
        self.outcome = outcome
        self.paths = type("Paths", (), {"stderr": Path(f"/logs/{num}_0_log.err")})()

    def result(self):
        if isinstance(outcome := self.outcome, BaseException):
            raise outcome
        return outcome


def _job_return(status, value):
    from hydra.core.utils import JobReturn

    ret = JobReturn(overrides=[], status=status)
    ret.return_value = value
    return ret


def test_failed_jobs_end_the_sweep_with_one_line_each_after_every_job_ended(capsys):
    """A task that raised (Hydra's FAILED return), a job that died without a result and one that printed its own
    ``error:`` line: one line each, in job order, with the log path; the completed job's return is not lost."""
    from hydra.core.utils import JobStatus
    from submitit.core.utils import FailedJobError, UncompletedJobError

    outcomes = [
        _job_return(JobStatus.COMPLETED, 0.5),
        _job_return(JobStatus.FAILED, RuntimeError("CUDA out of memory\nTried to allocate 2 GiB")),
        UncompletedJobError("Job 7_2 (task: 0) with path /x\nhas not produced any output (state: CANCELLED by 0)"),
        FailedJobError("Job (task=0) failed during processing with trace:\n----------------------\nTraceback (most "
                       "recent call last):\n  File \"x.py\", line 1\nValueError: bad\n\n----------------------\n"
                       "You can check full logs with 'job.stderr(0)' and 'job.stdout(0)'or at paths:\n  - /x"),
        UncompletedJobError("Job 7_4 has not produced any output\nError stream produced:\nerror: eval.limit=0: must "
                            "be > 0\n"),
    ]
    with pytest.raises(SystemExit) as exc:
        results_or_exit([_planned(n) for n in range(5)], [_Ended(n, o) for n, o in enumerate(outcomes)], {})
    assert exc.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: job #1 (seed=1) failed: RuntimeError: CUDA out of memory (log: /logs/1_0_log.err)",
        "error: job #2 (seed=2) failed: UncompletedJobError: the job has not produced any output (state: CANCELLED "
        "by 0) (log: /logs/2_0_log.err)",
        "error: job #3 (seed=3) failed: ValueError: bad (log: /logs/3_0_log.err)",
        "error: job #4 (seed=4) failed: eval.limit=0: must be > 0 (log: /logs/4_0_log.err)",
    ]
    assert results_or_exit([_planned(0)], [_Ended(0, outcomes[0])], {})[0].return_value == 0.5


def test_a_job_timed_out_too_often_names_the_time_limit():
    from submitit.core.utils import UncompletedJobError

    reason = failure_reason(UncompletedJobError("Job not requeued because: timed-out too many times."),
                            {"timeout_min": 30, "max_num_timeout": 3})
    assert reason == ("UncompletedJobError: Job not requeued because: timed-out too many times. (every attempt "
                      "reached hydra.launcher.timeout_min=30; requeued max_num_timeout=3 times)")

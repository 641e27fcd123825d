"""launchers/*.sh: the exact tor_exp command each wrapper runs (dry run), and that it composes for Slurm."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAUNCHERS = ROOT / "launchers"
MINE = ["common.sh", "slurm_sweep.sh", "local_sweep.sh", "report.sh"] + [
    f"slurm_{t}.sh" for t in ("table1", "table2", "table3", "table4", "table5", "table6", "parity")]


def dry_run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TOR_EXP_", "WANDB_"))}
    return subprocess.run(["bash", str(LAUNCHERS / script), *args], capture_output=True, text=True, timeout=60,
                          env={**base, "TOR_EXP_DRY_RUN": "1", **env})


@pytest.mark.parametrize("script", MINE)
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(LAUNCHERS / script)]).returncode == 0


def test_slurm_table_wrapper_command():
    out = dry_run("slurm_table1.sh", "eval.batch_size=32", TOR_EXP_PARTITION="gpu", TOR_EXP_ACCOUNT="proj",
                  TOR_EXP_PARALLEL="4", TOR_EXP_WANDB="online", WANDB_PROJECT="tor", WANDB_ENTITY="me")
    assert out.returncode == 0, out.stderr
    assert shlex.split(out.stdout) == [
        "python", "-m", "tor_exp", "-m", "experiment=table1_mamba2", "launcher=slurm", "hydra.launcher.partition=gpu",
        "hydra.launcher.account=proj", "hydra.launcher.array_parallelism=4", "logger=wandb", "logger.mode=online",
        "logger.project=tor", "logger.entity=me", "eval.batch_size=32"]


@pytest.mark.parametrize("script,experiment", [("slurm_table2.sh", "table2_mamba"), ("slurm_table3.sh", "table3_metric"),
                                               ("slurm_table4.sh", "table4_locations"), ("slurm_table5.sh", "table5_design"),
                                               ("slurm_table6.sh", "table6_ltmp"), ("slurm_parity.sh", "parity")])
def test_every_table_wrapper_names_its_experiment(script, experiment):
    out = dry_run(script, TOR_EXP_PARTITION="p")
    assert out.returncode == 0, out.stderr
    assert shlex.split(out.stdout)[3:7] == ["-m", f"experiment={experiment}", "launcher=slurm",
                                            "hydra.launcher.partition=p"]


def test_bad_input_fails_with_one_line():
    out = dry_run("slurm_table1.sh")
    assert out.returncode == 2 and out.stderr.strip().startswith("error: TOR_EXP_PARTITION is not set")
    out = dry_run("slurm_sweep.sh", "table9", TOR_EXP_PARTITION="p")
    assert out.returncode == 2 and "experiment=table9: no such file" in out.stderr
    out = dry_run("local_sweep.sh", "smoke", TOR_EXP_WANDB="yes")
    assert out.returncode == 2 and "TOR_EXP_WANDB=yes" in out.stderr


def test_local_and_report_commands(tmp_path):
    out = dry_run("local_sweep.sh", "smoke")
    assert shlex.split(out.stdout) == ["python", "-m", "tor_exp", "-m", "experiment=smoke", "launcher=local"]
    out = dry_run("local_sweep.sh", "smoke", TOR_EXP_LOCAL="basic", TOR_EXP_WANDB="offline")
    assert shlex.split(out.stdout) == ["python", "-m", "tor_exp", "-m", "experiment=smoke", "logger=wandb",
                                       "logger.mode=offline"]
    (tmp_path / "multirun" / "table3_metric").mkdir(parents=True)
    out = dry_run("report.sh", "table3_metric", "--no-plots", TOR_EXP_WORKDIR=str(tmp_path))
    assert shlex.split(out.stdout) == ["python", "-m", "tor_exp.report", "multirun/table3_metric", "--no-plots"]
    out = dry_run("report.sh", "some_wandb_group", TOR_EXP_WORKDIR=str(tmp_path))
    assert shlex.split(out.stdout) == ["python", "-m", "tor_exp.report", "some_wandb_group"]


def test_slurm_command_composes_to_a_submitit_slurm_launcher():
    """The wrapper's overrides (minus -m) compose: experiment + launcher=slurm + partition."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tor_exp.config import config_dir
    from tor_exp.config import register_configs

    args = shlex.split(dry_run("slurm_table6.sh", TOR_EXP_PARTITION="gpu", TOR_EXP_TIMEOUT_MIN="90").stdout)[4:]
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose(config_name="config", overrides=args, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.gpus_per_node) == ("gpu", 90, 1)
    assert cfg.hydra.sweep.dir == "multirun/table6_ltmp" and cfg.logger.group == "table6_ltmp"

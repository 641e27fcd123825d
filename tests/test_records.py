"""The record keeper (tor_exp/records): results.json writing, the one definition of the keys that do not change a
result, the run folder's lock and fallback, and the W&B scalar keys."""
import ast
import json
import os
from pathlib import Path

import pytest

from tor_exp.records.keys import config_hash, dirname_exclude_keys, job_dirname
from tor_exp.records.results import load_results, write_results
from tor_exp.records.wandb_logger import flatten_metrics

ROOT = Path(__file__).resolve().parents[1]


def test_write_then_load_roundtrip_and_no_temp_file_left(tmp_path) -> None:
    import torch

    results = {"status": "complete", "keep_ratio": torch.tensor(0.5), "metrics": {"t": {"acc": 0.25}}}
    path = write_results(tmp_path, results)
    assert json.loads(path.read_text())["keep_ratio"] == 0.5
    assert load_results(tmp_path)["metrics"] == {"t": {"acc": 0.25}}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    (tmp_path / "results.json").write_text("{truncated")
    assert load_results(tmp_path) is None  # a corrupt file is never trusted by resume


def test_config_hash_ignores_logging_but_not_what_is_computed() -> None:
    base = {"model": {"name": "m"}, "reduction": {"q": 0.5}, "logger": {"mode": "offline"}, "resume": True}
    same = dict(base, logger={"mode": "online", "project": "x"}, resume=False, run_name="other")
    changed = dict(base, reduction={"q": 0.8})
    assert config_hash(base) == config_hash(same)
    assert config_hash(base) != config_hash(changed)


def test_the_keys_that_do_not_change_a_result_are_written_in_one_yaml_at_most() -> None:
    """They live in tor_exp/records/keys.py; Hydra's exclude_keys reads them through a resolver."""
    files = [p for p in (ROOT / "conf").rglob("*.yaml") if "exclude_keys" in p.read_text()]
    assert len(files) <= 1, files


def test_job_folder_names_leave_out_every_key_that_does_not_change_a_result() -> None:
    overrides = ["seed=1", "logger=wandb", "logger.project=p", "run_name=x", "resume=false", "overwrite=true",
                 "local.slurm.partition=gpu", "experiment=smoke", "reduction.q=0.3"]
    assert job_dirname(overrides, dirname_exclude_keys()) == "reduction.q=0.3,seed=1"
    # an experiment's sweep axes are left out (its folder prefix shows them); an ad-hoc sweep keeps its cells
    axes = dirname_exclude_keys({"model": "a,b", "+experiment/cell": "[none],[utrc,f20]"})
    assert job_dirname(["model=a", "+experiment/cell=[utrc,f20]", "seed=0"], axes) == "seed=0"
    assert job_dirname(["+experiment/cell=[utrc,f20]"], dirname_exclude_keys()) == "+experiment.cell=[utrc,f20]"


def test_sweep_folders_come_from_the_resolvers(compose) -> None:
    """Hydra's own exclude_keys and the job folder (experiment prefix + the rest) both come from records/keys.py."""
    from omegaconf import OmegaConf

    from tor_exp.records.keys import NON_RESULT_KEYS

    cfg = compose.dict("experiment=table3_metric", "model=mamba_2.8b", "reduction.metric=l1", "seed=2",
                       "logger.mode=online", hydra=True)
    excluded = OmegaConf.select(cfg, "hydra.job.config.override_dirname.exclude_keys")
    assert set(NON_RESULT_KEYS) | {"model", "reduction.metric"} <= set(excluded)
    assert OmegaConf.select(cfg, "hydra.sweep.subdir") == "mamba-2.8b/utrc-l1/f0.2/seed=2"


def test_records_is_core_and_imports_nothing_above_it() -> None:
    """Layer 1 (docs/architecture.md): records may import errors, paths and itself, never models, evaluation, the job
    or the config layer."""
    for path in sorted((ROOT / "tor_exp" / "records").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                if name.startswith("tor_exp"):
                    assert name.startswith(("tor_exp.records", "tor_exp.errors", "tor_exp.paths")), (path.name, name)
    assert not (ROOT / "tor_exp" / "logging").exists()


def test_a_failed_write_leaves_neither_a_partial_file_nor_a_temporary_one(tmp_path, monkeypatch) -> None:
    from tor_exp.records import files

    (tmp_path / "results.json").write_text("old")

    def no_room(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", no_room)
    with pytest.raises(OSError):
        files.atomic_write(tmp_path / "results.json", "new")
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert (tmp_path / "results.json").read_text() == "old"


def test_a_written_file_gets_the_mode_open_would_give_it(tmp_path) -> None:
    from tor_exp.records.files import atomic_write

    umask = os.umask(0o022)
    os.umask(umask)
    path = atomic_write(tmp_path / "a.json", "{}")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_held_folder_is_refused_to_another_holder_and_freed_on_release(tmp_path) -> None:
    from tor_exp.errors import ConfigError
    from tor_exp.records.folder import RunFolder

    with RunFolder(tmp_path / "run", {"seed": 0}):
        with pytest.raises(ConfigError, match=rf"{tmp_path / 'run'} is in use by another run \(pid {os.getpid()} "):
            RunFolder(tmp_path / "run", {"seed": 1}).claim()
    with RunFolder(tmp_path / "run", {"seed": 1}) as folder:
        folder.write_record({"status": "complete"})
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".tor_exp.lock", "results.json"]


def test_a_refused_write_goes_to_the_fallback_and_the_job_fails_naming_it(tmp_path, monkeypatch) -> None:
    import tempfile

    from tor_exp.errors import ConfigError
    from tor_exp.records import folder as folder_module
    from tor_exp.records.files import atomic_write

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    run = tmp_path / "run"

    def full(path, data):
        if run in Path(path).parents:
            raise OSError(28, "No space left on device")
        return atomic_write(path, data)

    with folder_module.RunFolder(run, {"seed": 0}) as folder:
        monkeypatch.setattr(folder_module, "atomic_write", full)
        spare = folder.write("samples/utrc/piqa.jsonl", "{}\n")
        folder.write_record({"status": "complete"})
        with pytest.raises(ConfigError) as err:
            folder.check_saved()
    assert spare == tmp_path / "tmp" / "tor_exp-unsaved" / folder.config_hash / "samples/utrc/piqa.jsonl"
    assert str(err.value) == (f"could not write samples/utrc/piqa.jsonl, results.json in {run} (No space left on "
                              f"device); saved to {spare.parents[2]} instead")
    assert json.loads((spare.parents[2] / "results.json").read_text()) == {"status": "complete"}
    assert not list(run.rglob("*.tmp"))


def test_setting_a_record_aside_takes_its_samples_along(tmp_path) -> None:
    """A recomputed or replaced record keeps the samples it lists; the new run's samples never stand beside it."""
    from tor_exp.records.results import set_aside

    write_results(tmp_path, {"status": "complete", "samples": {"none": {"t": "samples/none/t.jsonl"}}})
    (tmp_path / "samples" / "none").mkdir(parents=True)
    (tmp_path / "samples" / "none" / "t.jsonl").write_text("old\n")
    kept = set_aside(tmp_path, "previous")
    suffix = kept.name.split(".", 2)[2]
    assert (tmp_path / f"samples.{suffix}" / "none" / "t.jsonl").read_text() == "old\n"
    assert not (tmp_path / "samples").exists() and not (tmp_path / "results.json").exists()


def test_flatten_metrics_keys() -> None:
    results = {"metrics": {"piqa": {"acc": 0.5, "acc_stderr": 0.1, "alias": "piqa"}}, "target_flops": 0.2,
               "keep_ratio": 0.9, "realised_flops_reduction": 0.15, "headline": 0.42,
               "timings": {"load_s": 1.5}, "bench_summary": {"prefill_speedup_f0.2": 1.2}}
    flat = flatten_metrics(results)
    assert flat["metrics/piqa/acc"] == 0.5 and flat["metrics/piqa/acc_stderr"] == 0.1
    assert "metrics/piqa/alias" not in flat
    assert flat["avg_acc"] == pytest.approx(42.0)
    assert flat["timings/load_s"] == 1.5 and flat["bench/prefill_speedup_f0.2"] == 1.2
    assert flat["realised_flops_reduction"] == 0.15


def test_wandb_offline_run_is_written_locally_without_network(tmp_path, monkeypatch) -> None:
    """logger=wandb with mode offline: no account, no network; the run lands under <run dir>/wandb/."""
    from tor_exp.records.config import LoggerConfig
    from tor_exp.records.wandb_logger import log_to_wandb

    monkeypatch.setenv("WANDB_SILENT", "true")
    results = {"metrics": {"piqa": {"acc": 0.5}}, "headline": 0.5, "config": {"model": {"name": "tiny"}}}
    log_to_wandb(LoggerConfig(backend="wandb", mode="offline"), results, tmp_path, "tiny-utrc", group="sweep-1")
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb"))  # the binary log `wandb sync` uploads later


def test_bad_logger_values_name_the_key() -> None:
    from tor_exp.errors import ConfigError
    from tor_exp.records.config import LoggerConfig

    with pytest.raises(ConfigError, match=r"logger\.mode"):
        LoggerConfig(mode="sometimes")
    with pytest.raises(ConfigError, match=r"logger\.backend"):
        LoggerConfig(backend="tensorboard")

"""results.json writing, the resume hash and the W&B scalar keys."""
import json

import pytest

from tor_exp.records.results import config_hash, load_results, write_results
from tor_exp.records.wandb_logger import flatten_metrics


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

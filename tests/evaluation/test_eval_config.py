"""EvalConfig validation: bad values raise ConfigError naming the key."""
import pytest

from tor_exp.errors import ConfigError
from tor_exp.evaluation.config import FIXTURE_TASKS, EvalConfig, resolve_include_path


def test_defaults_are_the_fixture_suite():
    cfg = EvalConfig()
    assert cfg.tasks == list(FIXTURE_TASKS)
    assert (cfg.alignment, cfg.batch_size, cfg.num_fewshot, cfg.limit) == ("auto", 8, 0, None)
    assert cfg.compare_baseline is True and cfg.log_samples is False


@pytest.mark.parametrize("kwargs, key", [
    ({"tasks": []}, "eval.tasks"),
    ({"tasks": "piqa"}, "eval.tasks"),
    ({"limit": 0}, "eval.limit"),
    ({"limit": 2.5}, "eval.limit"),
    ({"batch_size": 0}, "eval.batch_size"),
    ({"alignment": "shifted"}, "eval.alignment"),
    ({"num_fewshot": -1}, "eval.num_fewshot"),
    ({"log_samples": "yes"}, "eval.log_samples"),
    ({"compare_baseline": 1}, "eval.compare_baseline"),
    ({"include_paths": "pkg://tor_exp/evaluation/tasks"}, "eval.include_paths"),
])
def test_bad_values_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        EvalConfig(**kwargs)


def test_include_path_pkg_prefix(tmp_path):
    resolved = resolve_include_path("pkg://tor_exp/evaluation/tasks")
    assert resolved.endswith("tor_exp/evaluation/tasks")
    assert resolve_include_path(str(tmp_path)) == str(tmp_path)
    with pytest.raises(ConfigError, match="eval.include_paths"):
        resolve_include_path(str(tmp_path / "missing"))

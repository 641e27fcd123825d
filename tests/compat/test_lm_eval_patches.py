"""The lm-eval and tqdm internals tor_exp.compat patches exist and take what the wrappers pass (fails loudly on an
upgrade that removes one), each patch acts inside its block and is undone after it."""
from __future__ import annotations

import argparse
import importlib
import inspect
import io
from types import SimpleNamespace

import pytest

from tor_exp.compat import lm_eval_harness as compat_lm_eval
from tor_exp.compat.tqdm import only_bars_starting_with
from tor_exp.errors import ConfigError


def _defined(module, dotted: str) -> bool:
    """``module.dotted`` exists and is callable, a method defined on its class itself (what the patch replaces)."""
    *owners, name = dotted.split(".")
    owner = module
    for part in owners:
        owner = getattr(owner, part, None)
    if owner is None:
        return False
    value = vars(owner).get(name) if owners else getattr(owner, name, None)
    return callable(value.__func__ if isinstance(value, classmethod) else value)


@pytest.mark.parametrize("module_name", sorted(compat_lm_eval.PATCHED))
def test_patched_lm_eval_symbols_exist(module_name):
    module = importlib.import_module(module_name)
    missing = [name for name in compat_lm_eval.PATCHED[module_name] if not _defined(module, name)]
    assert not missing, (f"{module_name} lost {missing} (patched for lm-eval {compat_lm_eval.WRITTEN_AGAINST}): "
                         "update tor_exp/compat/lm_eval_harness.py")


def test_patched_lm_eval_signatures_hold():
    """What the wrappers rely on beyond the names: TaskManager takes ``include_path``; ``from_cli`` is a classmethod
    taking the parsed namespace (else the command-line hooks silently do nothing)."""
    from lm_eval.tasks import TaskManager

    assert "include_path" in inspect.signature(TaskManager.__init__).parameters, \
        "lm_eval.tasks.TaskManager.__init__ lost include_path: update task_manager_searching"
    config_class = compat_lm_eval.evaluator_config_class()
    assert config_class is not None, "EvaluatorConfig.from_cli is no classmethod: update evaluator_config_checked"
    assert list(inspect.signature(config_class.from_cli).parameters)[:1] == ["namespace"]


def test_patches_are_undone_and_act_inside():
    import lm_eval.api.metrics as lm_metrics
    import lm_eval.evaluator as ev
    import tqdm.std

    before = ev.add_env_info, ev.get_git_commit_hash, vars(tqdm.std.tqdm)["__init__"]
    with compat_lm_eval.light_env_info():
        storage: dict = {}
        ev.add_env_info(storage)
        assert storage["pretty_env_info"].startswith("skipped by tor_exp") and ev.get_git_commit_hash() is None
    with compat_lm_eval.silent_bootstrap_notice():
        assert lm_metrics.print("not shown") is None and "print" in vars(lm_metrics)
    assert "print" not in vars(lm_metrics)
    with only_bars_starting_with("mine"):
        assert tqdm.std.tqdm(range(2), desc="other").disable
        assert not tqdm.std.tqdm(range(2), desc="mine: scoring", file=io.StringIO()).disable
    assert (ev.add_env_info, ev.get_git_commit_hash, vars(tqdm.std.tqdm)["__init__"]) == before


def _task_folder(root, name: str) -> str:
    folder = root / name
    folder.mkdir()
    (folder / f"{name}.yaml").write_text(f"task: {name}\ndataset_path: json\ntest_split: test\n"
                                         "output_type: loglikelihood\ndoc_to_text: x\ndoc_to_target: y\n")
    return str(folder)


def test_task_manager_searching_adds_folders_inside_only(tmp_path):
    from lm_eval.tasks import TaskManager

    ours, theirs = _task_folder(tmp_path, "probe_ours"), _task_folder(tmp_path, "probe_theirs")
    before = TaskManager.__init__
    with compat_lm_eval.task_manager_searching([ours]):
        inside = TaskManager(include_defaults=False, include_path=theirs)
        positional = TaskManager(None, [theirs], False)
    outside = TaskManager(include_defaults=False, include_path=theirs)
    assert {"probe_ours", "probe_theirs"} <= set(inside.task_index) and "probe_ours" in positional.task_index
    assert "probe_ours" not in outside.task_index and "probe_theirs" in outside.task_index
    assert TaskManager.__init__ is before


def test_evaluator_config_checked_sees_the_command_line_then_the_config():
    from lm_eval.config.evaluate_config import EvaluatorConfig

    before, seen = vars(EvaluatorConfig)["from_cli"], []
    with compat_lm_eval.evaluator_config_checked(lambda source: seen.append(type(source).__name__) or False):
        config = EvaluatorConfig.from_cli(argparse.Namespace(model="hf", tasks="probe", limit=2))
    assert seen == ["Namespace", "EvaluatorConfig"] and (config.model, config.limit) == ("hf", 2)
    seen.clear()
    with compat_lm_eval.evaluator_config_checked(lambda source: seen.append(type(source).__name__) or True):
        EvaluatorConfig.from_cli(argparse.Namespace(model="hf", tasks="probe"))
    assert seen == ["Namespace"]  # judged on the command line: not again
    assert vars(EvaluatorConfig)["from_cli"] is before


def test_cli_failures_worded_turns_lm_eval_failures_into_one_line():
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.config.evaluate_config import EvaluatorConfig

    def patched():
        cls = EvaluatorConfig
        return vars(cls)["from_cli"], vars(cls)["process_tasks"], vars(ConfigurableTask)["download"]

    before = patched()
    checked: list = []

    class NoTasks:  # fails at process_tasks' first step, with the ValueError lm-eval raises for unknown names
        @property
        def metadata(self):
            raise ValueError("Tasks not found: nope")

    with compat_lm_eval.cli_failures_worded(checked.append, lambda err: f"missing: {err}",
                                            lambda task, err: f"dataset of {task.config.task}: {type(err).__name__}"):
        EvaluatorConfig.from_cli(argparse.Namespace(model="hf", tasks="probe"))
        assert [type(c).__name__ for c in checked] == ["Namespace", "EvaluatorConfig"]
        with pytest.raises(ConfigError, match="^If --samples is not None, then --limit must be None.$"):
            EvaluatorConfig.from_cli(argparse.Namespace(model="hf", tasks="x", limit=2, samples='{"x": [1]}'))
        with pytest.raises(ConfigError, match="^missing: Tasks not found: nope$"):
            EvaluatorConfig.process_tasks(NoTasks())
        with pytest.raises(ConfigError, match="^dataset of probe: AttributeError$"):
            ConfigurableTask.download(SimpleNamespace(config=SimpleNamespace(task="probe")))
    assert patched() == before

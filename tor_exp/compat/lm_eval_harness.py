"""Patches of lm-eval's internals used while tor_exp evaluates (written against lm-eval 0.4.13).

:func:`light_env_info` replaces ``lm_eval.evaluator.add_env_info`` / ``get_git_commit_hash`` (a ``pip list``
subprocess of ~5 s per ``simple_evaluate`` and a git probe of the cwd); :func:`silent_bootstrap_notice` gives
``lm_eval.api.metrics`` a no-op ``print`` (its "bootstrapping for stddev" line per metric). Two serve lm-eval's own
command line (``tor_exp.lm_eval``, which passes in what is tor_exp's: this package never imports it):
:func:`task_manager_searching` extends ``lm_eval.tasks.TaskManager.__init__`` (every task search also looks in the
given folders), :func:`evaluator_config_checked` wraps ``EvaluatorConfig.from_cli`` (a check of the command line
as soon as lm-eval has read it) and :func:`cli_failures_worded` also wraps ``EvaluatorConfig.process_tasks`` and
``ConfigurableTask.download`` (lm-eval's argument, task-name and dataset failures become one-line
:class:`~tor_exp.errors.ConfigError`). Each is undone after its block; :data:`PATCHED` lists the symbols, which
``tests/compat/test_lm_eval_patches.py`` checks exist (on the class itself for a method).
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Any, Callable, Iterator, Optional, Sequence

from tor_exp.errors import ConfigError

#: the lm-eval release these patches were written against
WRITTEN_AGAINST = "0.4.13"
#: module → the symbols patched there (checked by the compat test)
PATCHED = {
    "lm_eval.evaluator": ("add_env_info", "get_git_commit_hash"),
    "lm_eval.tasks": ("TaskManager.__init__",),
    "lm_eval.config.evaluate_config": ("EvaluatorConfig.from_cli", "EvaluatorConfig.process_tasks"),
    "lm_eval.api.task": ("ConfigurableTask.download",),
}


@contextlib.contextmanager
def light_env_info() -> Iterator[None]:
    """lm-eval's environment report without ``torch.utils.collect_env`` and the git probe (tor_exp records its own
    run metadata); the transformers and lm-eval versions are still added."""
    import lm_eval.evaluator as ev

    original = ev.add_env_info, ev.get_git_commit_hash

    def add_versions(storage: dict[str, Any]) -> None:
        from importlib.metadata import version

        import transformers

        storage.update({"pretty_env_info": "skipped by tor_exp (see results.json metadata)",
                        "transformers_version": transformers.__version__, "lm_eval_version": version("lm_eval")})

    ev.add_env_info = add_versions
    ev.get_git_commit_hash = lambda: None
    try:
        yield
    finally:
        ev.add_env_info, ev.get_git_commit_hash = original


@contextlib.contextmanager
def silent_bootstrap_notice() -> Iterator[None]:
    """No "bootstrapping for stddev: ..." line per metric (a module-level ``print`` shadowing the builtin)."""
    import lm_eval.api.metrics as lm_metrics

    lm_metrics.print = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del lm_metrics.print


@contextlib.contextmanager
def task_manager_searching(folders: Sequence[str]) -> Iterator[None]:
    """Every lm-eval ``TaskManager`` built inside searches ``folders`` too, before the caller's ``include_path``
    (which therefore wins on a name clash). lm-eval's ``run``, ``ls`` and ``validate`` commands each build their own
    TaskManager from ``--include_path``, which holds one folder: its constructor is the one place all of them share.
    Relies on ``TaskManager.__init__`` taking ``include_path`` (a folder, a list of them or None)."""
    from lm_eval.tasks import TaskManager

    original = TaskManager.__init__
    signature = inspect.signature(original)
    ours = [str(folder) for folder in folders]

    def init(self, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        given = bound.arguments.get("include_path")
        given = [] if given is None else list(given) if isinstance(given, (list, tuple)) else [given]
        bound.arguments["include_path"] = ours + [str(p) for p in given if str(p) not in ours]
        original(*bound.args, **bound.kwargs)

    TaskManager.__init__ = init  # type: ignore[method-assign]
    try:
        yield
    finally:
        TaskManager.__init__ = original  # type: ignore[method-assign]


def evaluator_config_class() -> Any:
    """lm-eval's ``EvaluatorConfig`` when it has the ``from_cli`` classmethod :func:`evaluator_config_checked`
    wraps, else None (another lm-eval version: nothing is hooked)."""
    try:
        from lm_eval.config.evaluate_config import EvaluatorConfig
    except ImportError:
        return None
    return EvaluatorConfig if isinstance(EvaluatorConfig.__dict__.get("from_cli"), classmethod) else None


@contextlib.contextmanager
def evaluator_config_checked(check: Callable[[Any], bool]) -> Iterator[None]:
    """``check`` runs as soon as lm-eval's command line has read its arguments (``EvaluatorConfig.from_cli``),
    before lm-eval indexes its tasks or logs anything about the run, so that a bad argument ends the command at
    once. ``check(source)`` gets the parsed command line (when no ``--config`` file is given) and returns whether it
    could judge it; otherwise, or with a ``--config`` file, it gets lm-eval's merged ``EvaluatorConfig`` (same
    names). Where lm-eval has no such step (another version), nothing is hooked."""
    config_class = evaluator_config_class()
    if config_class is None:
        yield
        return
    original = config_class.__dict__["from_cli"]

    def from_cli(cls, namespace: Any, *args: Any, **kwargs: Any) -> Any:
        # the command line alone, before lm-eval logs a line; with a --config file, once it is merged in
        checked = not getattr(namespace, "config", None) and check(namespace)
        config = original.__func__(cls, namespace, *args, **kwargs)
        if not checked:
            check(config)
        return config

    config_class.from_cli = classmethod(from_cli)  # type: ignore[method-assign]
    try:
        yield
    finally:
        config_class.from_cli = original  # type: ignore[method-assign]


@contextlib.contextmanager
def cli_failures_worded(check: Callable[[Any], None], missing_tasks_line: Callable[[ValueError], Optional[str]],
                        dataset_failure_line: Callable[[Any, Exception], Optional[str]]) -> Iterator[None]:
    """lm-eval's command line ending in one line (:class:`ConfigError`) instead of a traceback or a late warning:
    ``check(source)`` (raising ConfigError) gets the parsed command line before lm-eval logs a line (without a
    ``--config`` file) and the merged ``EvaluatorConfig`` after it; lm-eval's own argument errors (ValueError,
    TypeError, FileNotFoundError in ``from_cli``) keep their first line; a ValueError of
    ``EvaluatorConfig.process_tasks`` becomes ``missing_tasks_line(err)`` and an exception of
    ``ConfigurableTask.download`` ``dataset_failure_line(task, err)`` (each re-raised as it was when that gives
    None). Where lm-eval has no such steps (another version), nothing is hooked."""
    config_class = evaluator_config_class()
    try:
        from lm_eval.api.task import ConfigurableTask
    except ImportError:
        ConfigurableTask = None  # noqa: N806
    process_tasks = None if config_class is None else config_class.__dict__.get("process_tasks")
    download = None if ConfigurableTask is None else ConfigurableTask.__dict__.get("download")
    if config_class is None or process_tasks is None or download is None:
        yield
        return
    from_cli_before = config_class.__dict__["from_cli"]

    def from_cli(cls, namespace: Any, *args: Any, **kwargs: Any) -> Any:
        if not getattr(namespace, "config", None):  # the command line alone: before lm-eval logs a line
            check(namespace)
        try:
            config = from_cli_before.__func__(cls, namespace, *args, **kwargs)
        except ConfigError:
            raise
        except (ValueError, TypeError, FileNotFoundError) as err:  # lm-eval's own argument checks
            raise ConfigError(str(err).strip().splitlines()[0] or type(err).__name__) from err
        check(config)  # with a --config file merged in
        return config

    def checked_tasks(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return process_tasks(self, *args, **kwargs)
        except ValueError as err:
            line = missing_tasks_line(err)
            if line is None:
                raise
            raise ConfigError(line) from err

    def checked_download(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return download(self, *args, **kwargs)
        except Exception as err:
            line = dataset_failure_line(self, err)
            if line is None:
                raise
            raise ConfigError(line) from err

    config_class.from_cli = classmethod(from_cli)  # type: ignore[method-assign]
    config_class.process_tasks = checked_tasks  # type: ignore[method-assign]
    ConfigurableTask.download = checked_download  # type: ignore[method-assign]
    try:
        yield
    finally:
        config_class.from_cli = from_cli_before  # type: ignore[method-assign]
        config_class.process_tasks = process_tasks  # type: ignore[method-assign]
        ConfigurableTask.download = download  # type: ignore[method-assign]

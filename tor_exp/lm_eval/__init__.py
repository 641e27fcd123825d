"""lm-eval integration: the model name ``tor_exp`` (built from tor_exp's config names) and lm-eval's own CLI.

This entry point is the one place ``tor_exp`` is registered with lm-eval: :class:`TorExpByName` composes configs
(the config layer), so it cannot live in ``tor_exp.evaluation``, which holds the backend it extends
(:class:`tor_exp.evaluation.lm.TorExpLM`, over an in-memory model; importing that registers nothing).

Command line (``tor-exp-lm-eval`` is the same)::

    python -m tor_exp.lm_eval --model tor_exp --model_args model=reference,reduction=utrc --tasks lambada_fixture

is lm-eval's command line with ``tor_exp`` registered and the bundled task folders (:data:`TASK_FOLDERS`: the six
fixtures, their tag ``tor_exp_fixtures``, ``reference_heldout`` and ``reference_heldout_mc``) added to every task search, so those names work
from any directory; ``--include_path`` adds more.

Python::

    import lm_eval, tor_exp.lm_eval  # importing registers "tor_exp"
    lm_eval.simple_evaluate(model="tor_exp", model_args="model=reference,reduction=utrc,reduction.target_flops=0.3",
                            tasks=[...])

``model_args`` are composed exactly as ``python -m tor_exp`` composes its overrides (same conf dir, schemas and
validation): ``model=<name>``, ``reduction=<name>`` (``none``/``None``/``null`` = no reduction) and dotted keys
(``reduction.q=0.3``, ``eval.alignment=offset``); a key that is absent keeps the CLI's default. Bad input raises
:class:`~tor_exp.errors.ConfigError` (Hydra's composition errors included, worded as ``python -m tor_exp`` words
them); the command line prints it as one line ``error: ...`` and exits 2, before lm-eval indexes its tasks.
"""
from __future__ import annotations

import contextlib
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, Iterator, Optional

import lm_eval.models  # noqa: F401  (fills lm-eval's lazy model registry before ours is added)
from lm_eval.api.registry import register_model

from tor_exp.compat import lm_eval_harness as compat_lm_eval
from tor_exp.errors import ConfigError, fail
from tor_exp.evaluation.lm import TorExpLM

if TYPE_CHECKING:
    from tor_exp.config import ValidatedConfig

_ABSENT = object()
#: keyword arguments lm-eval passes to every model that this backend ignores
_IGNORED = ("trust_remote_code", "parallelize")
#: ``model_args`` that are TorExpLM's own settings, not config overrides
_OWN = ("max_length", "max_gen_toks", "add_bos_token", "prefix_token_id")
#: the task folders shipped in the package, searched by the command line besides lm-eval's own tasks
TASK_FOLDERS = ("pkg://tor_exp/evaluation/tasks", "pkg://tor_exp/reference/task")


def model_overrides(model: str, reduction: Any, dotted: dict[str, Any]) -> list[str]:
    """``model_args`` → the CLI's override list. lm-eval parses ``none``/``None`` to None: for ``reduction``
    that means no reduction, never "the default reduction"; for a dotted key it means null."""
    args = [f"model={model}"]
    if reduction is not _ABSENT:
        no_reduction = reduction is None or str(reduction).strip().lower() in ("none", "null", "")
        args.append(f"reduction={'none' if no_reduction else reduction}")
    for key, value in dotted.items():
        if "." not in key:
            raise ConfigError(f"eval model_args: unknown key {key!r} (use model=, reduction= or dotted overrides; "
                              "list values contain commas, so pass model_args as a dict for those)")
        args.append(f"{key}={'null' if value is None else value}")
    return args


def compose_model_args(model: str, reduction: Any, dotted: dict[str, Any]) -> "ValidatedConfig":
    """The validated config that ``model_args`` name (:func:`tor_exp.config.compose` of
    :func:`model_overrides`); Hydra's and OmegaConf's composition errors raised as one-line ConfigErrors."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from tor_exp.config import compose, config_error_line

    try:
        return compose(model_overrides(model, reduction, dotted))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(config_error_line(err)) from err


def check_model_args(model_args: dict[str, Any]) -> None:
    """Compose and validate ``model_args`` as :class:`TorExpByName` will, without loading anything: raises the
    ConfigError the backend would raise later. An in-memory model (not a config name) is left to the backend."""
    not_overrides = _IGNORED + _OWN + ("model", "pretrained", "tokenizer", "device", "alignment", "batch_size",
                                       "max_batch_size", "reduction")
    model = model_args.get("model")
    model = model_args.get("pretrained") if model is None else model
    if isinstance(model, str):
        compose_model_args(model, model_args.get("reduction", _ABSENT),
                           {k: v for k, v in model_args.items() if k not in not_overrides})


@register_model("tor_exp")
class TorExpByName(TorExpLM):
    """``TorExpLM`` whose model is built from config names, patched with the configured reduction for the
    lifetime of the backend (lm-eval owns it until it is garbage collected)."""

    def __init__(self, model: Any = None, tokenizer: Any = None, *, pretrained: Any = None,
                 reduction: Any = _ABSENT, device: Optional[str] = None, alignment: Optional[str] = None,
                 batch_size: Any = None, max_batch_size: Optional[int] = None, **kwargs: Any) -> None:
        model = model if model is not None else pretrained
        for key in _IGNORED:
            kwargs.pop(key, None)
        own = {k: kwargs.pop(k) for k in _OWN if k in kwargs}
        if not isinstance(model, str):
            if kwargs or reduction is not _ABSENT:
                raise ConfigError(f"eval model_args {sorted(kwargs) + (['reduction'] if reduction is not _ABSENT else [])}"
                                  ": overrides need `model` given by config name")
            super().__init__(model, tokenizer, alignment=alignment or "auto", batch_size=batch_size or 8,
                             max_batch_size=max_batch_size, **own)
            return
        import torch

        from tor_exp.models import load_model, model_shape
        from tor_exp.models.schedule import reducing

        from tor_exp import distributed

        v = compose_model_args(model, reduction, kwargs)
        from tor_exp.paths import usable_datasets_cache

        usable_datasets_cache()  # lm-eval's tasks write a datasets cache: a usable one before the model loads
        distributed.init_from_env()  # under torchrun / accelerate launch: one replica per process
        # lm-eval's command line asks for cuda:0 unless told otherwise: like its HFLM, use the CPU when there is none
        dev = device if device and (not str(device).startswith("cuda") or torch.cuda.is_available()) else \
            ("cuda" if torch.cuda.is_available() else "cpu")
        dev = distributed.local_device("cuda" if str(dev).startswith("cuda") else dev)  # this rank's GPU
        net, tok = load_model(v.model, device=dev)
        method, schedule = v.reduction_for(model_shape(net))
        self._patched = ExitStack()
        self._patched.enter_context(reducing(net, method, schedule, tokenizer=tok,
                                             calibration_source=v.model.calibration_text))
        super().__init__(net, tok, alignment=alignment or v.eval.alignment, batch_size=batch_size or v.eval.batch_size,
                         max_batch_size=max_batch_size or v.eval.max_batch_size, **own)

    def __del__(self) -> None:
        stack = getattr(self, "_patched", None)
        if stack is not None:
            stack.close()


def task_folders() -> list[str]:
    """:data:`TASK_FOLDERS` as absolute folders of the installed package (for ``TaskManager(include_path=...)``)."""
    from tor_exp.evaluation.config import resolve_include_path

    return [resolve_include_path(folder) for folder in TASK_FOLDERS]


@contextlib.contextmanager
def bundled_tasks() -> Iterator[None]:
    """Every lm-eval ``TaskManager`` built inside searches the bundled task folders too (before the caller's
    ``include_path``, which therefore wins on a name clash): lm-eval's ``run``, ``ls`` and ``validate`` commands
    then find them (the patch: :func:`tor_exp.compat.lm_eval_harness.task_manager_searching`)."""
    with compat_lm_eval.task_manager_searching(task_folders()):
        yield


def _check_tor_exp_model_args(source: Any) -> bool:
    """``check_model_args`` on ``source.model_args`` when ``source`` (the parsed command line or lm-eval's
    ``EvaluatorConfig``) runs ``--model tor_exp`` with them as a dict; False when there is nothing to check yet."""
    args = getattr(source, "model_args", None) or {}
    if getattr(source, "model", None) != "tor_exp" or not isinstance(args, dict):
        return False
    check_model_args(args)
    return True


@contextlib.contextmanager
def model_args_checked_early() -> Iterator[None]:
    """``--model tor_exp``'s ``model_args`` are checked as soon as lm-eval has read them (command line and
    ``--config`` file merged into its ``EvaluatorConfig``), before it indexes its tasks (~15 s) or logs anything
    about the run: a bad override then ends the command at once. Where lm-eval has no such step (another
    version), nothing is hooked and the same error comes from the backend when lm-eval builds it (the patch:
    :func:`tor_exp.compat.lm_eval_harness.evaluator_config_checked`)."""
    with compat_lm_eval.evaluator_config_checked(_check_tor_exp_model_args):
        yield


def check_cli_args(args: Any) -> None:
    """What lm-eval leaves to a traceback or a buried warning, checked before it indexes its tasks or loads a model:
    ``--limit`` must be > 0, ``--log_samples`` / ``--predict_only`` need ``--output_path``, and the output folder
    must be writable (lm-eval would run everything, then only warn that nothing was saved). ``args`` is the parsed
    command line or lm-eval's merged ``EvaluatorConfig`` (same names); raises :class:`ConfigError`."""
    from pathlib import Path

    from tor_exp.paths import unwritable_folder

    limit = getattr(args, "limit", None)
    if limit is not None:
        try:
            positive = float(limit) > 0
        except (TypeError, ValueError):
            positive = False
        if not positive:
            raise ConfigError(f"--limit={limit}: must be > 0 (a number of documents per task, or a fraction of "
                              "them below 1)")
    output = getattr(args, "output_path", None)
    for flag in ("log_samples", "predict_only"):
        if getattr(args, flag, False) and not output:
            raise ConfigError(f"--{flag}: needs --output_path (the per-document records are written there)")
    if output:
        path = Path(str(output)).expanduser()
        folder = path.parent if path.suffix == ".json" else path  # lm-eval's rule: a .json path names the file
        problem = unwritable_folder(folder, keep=False)
        if problem:
            raise ConfigError(f"--output_path={output}: cannot write the results there ({folder}: {problem})")


def _missing_tasks_line(err: ValueError) -> Optional[str]:
    text = str(err).strip()
    if not text.startswith("Tasks not found"):
        return None
    names = text.split(":", 1)[1].strip() if ":" in text else text
    return (f"--tasks: unknown task(s) {names}: neither lm-eval's tasks nor the bundled ones (lambada_fixture, ..., "
            "tor_exp_fixtures, reference_heldout, reference_heldout_mc); `python -m tor_exp.lm_eval ls tasks` lists "
            "every name")


def _dataset_failure_line(task: Any, err: Exception) -> Optional[str]:
    """One line for a task whose dataset could not be loaded from the Hub (offline, no network), else None."""
    import os

    try:
        from datasets.exceptions import DatasetNotFoundError
    except ImportError:  # another datasets version
        DatasetNotFoundError = ()  # type: ignore[assignment]  # noqa: N806
    name = getattr(getattr(task, "config", None), "task", None) or type(task).__name__
    dataset = getattr(getattr(task, "config", None), "dataset_path", None)
    offline = [k for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE") if os.environ.get(k, "").lower() in
               ("1", "true", "yes", "on")]
    why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, ConnectionError):
        return (f"--tasks {name}: its dataset {dataset!r} is on the Hugging Face Hub, which is unreachable"
                + (f" ({'='.join((offline[0], os.environ[offline[0]]))} is set)" if offline else "")
                + f": {why}; use a bundled task (e.g. lambada_fixture) or run with hub access")
    if isinstance(err, DatasetNotFoundError):
        return f"--tasks {name}: its dataset {dataset!r} was not found on the Hub or in the local cache: {why}"
    return None


@contextlib.contextmanager
def cli_args_checked_early() -> Iterator[None]:
    """The command line's own arguments checked before lm-eval acts on them (:func:`check_cli_args`; lm-eval's own
    argument errors become one line too); an unknown ``--tasks`` name and a task whose Hub dataset cannot be
    reached end the command with one line naming the task (:class:`ConfigError`) instead of a traceback. Where
    lm-eval has no such step (another version), nothing is hooked (the patch:
    :func:`tor_exp.compat.lm_eval_harness.cli_failures_worded`)."""
    with compat_lm_eval.cli_failures_worded(check_cli_args, _missing_tasks_line, _dataset_failure_line):
        yield


def main(argv: Optional[list[str]] = None) -> None:
    """``python -m tor_exp.lm_eval <lm-eval's own arguments>`` (console script ``tor-exp-lm-eval``): lm-eval's
    command line with ``--model tor_exp`` registered and the bundled tasks found by name from any directory.
    Bad ``model_args`` end it like ``python -m tor_exp``: one line ``error: ...`` on stderr, exit code 2."""
    import logging
    import sys

    from lm_eval.__main__ import cli_evaluate

    from tor_exp.evaluation.runner import ExpectedNotices

    from tor_exp import distributed

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    notices = ExpectedNotices()
    for name in notices.LOGGERS:  # lm-eval's hint about --metadata, printed for each bundled task
        logging.getLogger(name).addFilter(notices)
    if distributed.init_from_env() and not distributed.is_main():
        sys.argv = without_wandb(sys.argv)  # lm-eval would start a W&B run in every process
    with distributed.ending_together(), distributed.terminated_with_failure_line():
        try:
            with bundled_tasks(), model_args_checked_early(), cli_args_checked_early():
                cli_evaluate()
        except ConfigError as err:
            fail(str(err))


def without_wandb(argv: list[str]) -> list[str]:
    """``argv`` without lm-eval's W&B options (``--wandb_args X``, ``--wandb_args=X``, and the config ones): a
    data-parallel run's other ranks log nothing, rank 0 logs the one run with every rank's results."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--wandb_args", "--wandb_config_args"):
            skip = "=" not in arg
            continue
        out.append(arg)
    return out

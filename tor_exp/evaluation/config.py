"""Schema for the `eval` config group (registered by the Hydra entry as group ``eval``, name ``eval_schema``)."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Optional

from tor_exp.errors import ConfigError
from tor_exp.paths import resolve_pkg_path

ALIGNMENTS = ("auto", "exact", "offset")
AUTO = "auto"
FIXTURE_TASKS = ("lambada_fixture", "hellaswag_fixture", "piqa_fixture", "arc_easy_fixture",
                 "arc_challenge_fixture", "winogrande_fixture")
PAPER_TASKS = ("lambada_openai", "hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande")


@dataclass
class EvalConfig:
    """What to score and how.

    ``alignment``: ``exact`` protects the scored positions and gathers logits by original position (every
    scored token is predicted from its true predecessor); ``offset`` reproduces the released evaluation
    (nothing protected, lm-eval's slice rule on the shortened logits) and counts requests it mis-scores;
    ``auto`` (default) is ``offset`` for the parity methods and ``exact`` otherwise (:func:`resolve_alignment`).
    ``include_paths`` are extra lm-eval task folders; ``pkg://tor_exp/x/y`` means ``<installed tor_exp>/x/y``.
    """

    tasks: list[str] = field(default_factory=lambda: list(FIXTURE_TASKS))
    include_paths: list[str] = field(default_factory=lambda: ["pkg://tor_exp/evaluation/tasks"])
    limit: Optional[int] = None
    # a positive integer, or auto: the largest batch that fits, found per request type (lm-eval's HFLM rule)
    batch_size: Any = 8
    # the first size batch_size=auto tries (null: lm-eval's 64)
    max_batch_size: Optional[int] = None
    alignment: str = "auto"
    num_fewshot: int = 0
    log_samples: bool = False
    compare_baseline: bool = True
    verbose: bool = False
    # bootstrap resamples, for lm-eval's stderr of non-mean metrics (its own default) and for the paired interval
    # of each method-vs-none difference; 0 skips both
    bootstrap_iters: int = 100000

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str):
            raise ConfigError(f"eval.tasks={self.tasks!r}: must be a list of task names")
        if not self.tasks or not all(isinstance(t, str) and t for t in self.tasks):
            raise ConfigError(f"eval.tasks={list(self.tasks)!r}: must be a non-empty list of task names")
        if isinstance(self.include_paths, str):
            raise ConfigError(f"eval.include_paths={self.include_paths!r}: must be a list of folders")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or self.limit <= 0):
            raise ConfigError(f"eval.limit={self.limit!r}: must be a positive integer or null")
        self.batch_size = batch_size_setting(self.batch_size)
        if self.max_batch_size is not None and (isinstance(self.max_batch_size, bool)
                                                or not isinstance(self.max_batch_size, int) or self.max_batch_size <= 0):
            raise ConfigError(f"eval.max_batch_size={self.max_batch_size!r}: must be a positive integer or null")
        if self.alignment not in ALIGNMENTS:
            raise ConfigError(f"eval.alignment={self.alignment!r}: must be one of {', '.join(ALIGNMENTS)}")
        if isinstance(self.num_fewshot, bool) or not isinstance(self.num_fewshot, int) or self.num_fewshot < 0:
            raise ConfigError(f"eval.num_fewshot={self.num_fewshot!r}: must be an integer >= 0")
        if isinstance(self.bootstrap_iters, bool) or not isinstance(self.bootstrap_iters, int) or self.bootstrap_iters < 0:
            raise ConfigError(f"eval.bootstrap_iters={self.bootstrap_iters!r}: must be an integer >= 0")
        for key in ("log_samples", "compare_baseline", "verbose"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"eval.{key}={getattr(self, key)!r}: must be true or false")


def batch_size_setting(value: Any) -> Any:
    """``eval.batch_size`` (and lm-eval's ``batch_size``): a positive integer, or ``"auto"`` for the largest batch
    that fits, detected on the longest request of each request type as lm-eval's HFLM does."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)  # lm-eval's command line passes numbers as text
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"eval.batch_size={value!r}: must be a positive integer or auto")
    return value


def resolve_alignment(alignment: str, method: Any) -> str:
    """The concrete alignment (``exact`` | ``offset``) for ``method`` (a reduction name, a method object, or
    None for an unreduced model); used by config validation and by the lm-eval backend.

    Parity methods (their config class's ``parity``, METHOD.md §6) reduce every token of a request, scored ones
    included, as the released code does, so ``exact`` (scored positions protected) cannot hold for them: ``auto``
    gives them ``offset`` (the released evaluation's rule) and an explicit ``exact`` is refused in one line.
    """
    if alignment not in ALIGNMENTS:
        raise ConfigError(f"eval.alignment={alignment!r}: must be one of {', '.join(ALIGNMENTS)}")
    name = method if isinstance(method, str) or method is None else getattr(method, "name", None)
    from tor_exp.reduction.parity import is_parity

    parity = is_parity(name)
    if alignment == "auto":
        return "offset" if parity else "exact"
    if alignment == "exact" and parity:
        raise ConfigError(f"eval.alignment=exact: reduction={name} reduces scored tokens (released behaviour); "
                          "use eval.alignment=offset (or auto)")
    return alignment


def resolve_include_path(path: str) -> str:
    """``pkg://tor_exp/sub/dir`` -> absolute folder inside the installed package; other paths made absolute."""
    import os

    resolved = os.path.abspath(os.path.expanduser(resolve_pkg_path(path, "eval.include_paths")))
    if not os.path.isdir(resolved):
        raise ConfigError(f"eval.include_paths: {path!r} is not a folder ({resolved})")
    return resolved


def folder_task_names(folders: list[str]) -> set[str]:
    """The task, tag and group names the YAML files below ``folders`` define, read without lm-eval's indexing
    (a TaskManager over even the bundled folders takes seconds): a name found here is one lm-eval finds there."""
    import os

    import yaml

    class _Loader(yaml.SafeLoader):
        """lm-eval's task files use tags such as ``!function``; their values do not matter for the names."""

    _Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    names: set[str] = set()
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                if not name.endswith((".yaml", ".yml")):
                    continue
                try:
                    with open(os.path.join(root, name)) as fh:
                        doc = yaml.load(fh, Loader=_Loader)
                except (OSError, yaml.YAMLError):
                    continue  # lm-eval's own index decides about a file that does not parse here
                if not isinstance(doc, dict):
                    continue
                for key in ("task", "tag", "group"):
                    values = doc.get(key)
                    values = [values] if isinstance(values, str) else values if key == "tag" else []
                    names.update(v for v in values or [] if isinstance(v, str))
    return names


@functools.lru_cache(maxsize=1)
def lm_eval_task_file_names() -> frozenset[str]:
    """The ``task:`` / ``tag:`` / ``group:`` names written on one line in lm-eval's own task files (a text scan of
    its ~14k YAML files, about half a second): the names of its tasks without building its index."""
    import importlib.util
    import os
    import re

    spec = importlib.util.find_spec("lm_eval")
    if spec is None or spec.origin is None:
        return frozenset()
    line = re.compile(r"^(?:task|tag|group):[ \t]*['\"]?([^'\"#\s]+)", re.M)
    names: set[str] = set()
    for root, _, files in os.walk(os.path.join(os.path.dirname(spec.origin), "tasks")):
        for name in files:
            if name.endswith((".yaml", ".yml")):
                with open(os.path.join(root, name), encoding="utf-8", errors="replace") as fh:
                    names.update(line.findall(fh.read()))
    return frozenset(names)


@functools.lru_cache(maxsize=8)
def task_index(paths: tuple[str, ...], include_defaults: bool):
    """lm-eval's TaskManager over ``paths`` (with its own tasks when ``include_defaults``: 12-15 s), one per folder
    set and process: config validation and the evaluation share it."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths) or None, include_defaults=include_defaults)


def indexed_task_names(paths: tuple[str, ...]) -> set[str]:
    """Every name lm-eval's full task index (its own tasks and ``paths``) knows."""
    return set(task_index(paths, True).task_index)


def check_task_names(tasks: list[str], include_paths: list[str]) -> None:
    """Every ``eval.tasks`` entry is a task lm-eval will find, checked before anything loads: names defined in
    the ``include_paths`` folders are found by reading their YAML files (milliseconds), lm-eval's own by a text
    scan of its task files (:func:`lm_eval_task_file_names`); only a name found by neither costs lm-eval's task
    index (12-15 s, once per process: the job's evaluation reuses it), which has the last word."""
    folders = [resolve_include_path(p) for p in include_paths]
    missing = [t for t in tasks if t not in folder_task_names(folders)]
    missing = [t for t in missing if t not in lm_eval_task_file_names()]
    if not missing:
        return
    unknown = [t for t in missing if t not in indexed_task_names(tuple(folders))]
    if unknown:
        raise ConfigError(f"eval.tasks: unknown lm-eval task(s) {unknown} (not in lm-eval's task index nor in "
                          f"eval.include_paths={list(include_paths)})")

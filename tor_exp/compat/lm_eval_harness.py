"""Patches of lm-eval's internals used while tor_exp evaluates (written against lm-eval 0.4.13).

:func:`light_env_info` replaces ``lm_eval.evaluator.add_env_info`` / ``get_git_commit_hash`` (a ``pip list``
subprocess of ~5 s per ``simple_evaluate`` and a git probe of the cwd); :func:`silent_bootstrap_notice` gives
``lm_eval.api.metrics`` a no-op ``print`` (its "bootstrapping for stddev" line per metric). Each is undone after its
block; :data:`PATCHED` lists the symbols, which ``tests/compat/test_lm_eval_patches.py`` checks exist.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

#: the lm-eval release these patches were written against
WRITTEN_AGAINST = "0.4.13"
#: module → the symbols patched there (checked by the compat test)
PATCHED = {"lm_eval.evaluator": ("add_env_info", "get_git_commit_hash")}


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

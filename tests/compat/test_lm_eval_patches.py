"""The lm-eval and tqdm internals tor_exp.compat patches exist (fails loudly on an upgrade that removes one), and
each patch is undone after its block."""
from __future__ import annotations

import importlib
import io

import pytest

from tor_exp.compat import lm_eval_harness as compat_lm_eval
from tor_exp.compat.tqdm import only_bars_starting_with


@pytest.mark.parametrize("module_name", sorted(compat_lm_eval.PATCHED))
def test_patched_lm_eval_symbols_exist(module_name):
    module = importlib.import_module(module_name)
    missing = [name for name in compat_lm_eval.PATCHED[module_name] if not callable(getattr(module, name, None))]
    assert not missing, f"{module_name} lost {missing}: update tor_exp/compat/lm_eval_harness.py"


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

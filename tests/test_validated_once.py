"""A command validates its config and solves its schedule once (issue 30, item 4): the precheck's validation is
the job's, the job reuses validation's schedule when it holds for the loaded model, and nothing changes the
validated config afterwards."""
from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

import tor_exp.config as config_module
import tor_exp.models.schedule as schedule_module
from tor_exp.config import compose
from tor_exp.models import load_model, model_shape
from tor_exp.models.schedule import build_schedule, holds_for


def _counting(monkeypatch) -> Counter:
    counts: Counter = Counter()
    validate, solve = config_module._validate, schedule_module.solve_keep_ratio

    def counted_validate(*args, **kwargs):
        counts["validate"] += 1
        return validate(*args, **kwargs)

    def counted_solve(*args, **kwargs):
        counts["solve"] += 1
        return solve(*args, **kwargs)

    monkeypatch.setattr(config_module, "_validate", counted_validate)
    monkeypatch.setattr(schedule_module, "solve_keep_ratio", counted_solve)
    config_module._validated.clear()
    return counts


@pytest.mark.parametrize("model", ["tiny_mamba2", "tiny_nemotron_h", "tiny_qwen3_next"])
def test_a_command_validates_and_solves_once(model: str, tmp_path: Path, monkeypatch) -> None:
    """``python -m tor_exp`` (in process): one validation, one ρ solve, for a uniform Mamba-2 (solved from the
    depth alone) and two hybrids (solved on the shape the config tells); the record's ρ is the one a schedule
    solved directly on the loaded model gets."""
    from hydra.core.global_hydra import GlobalHydra

    import tor_exp.__main__ as entry

    counts = _counting(monkeypatch)
    overrides = ["task=generate", f"model={model}", "reduction=utrc", "reduction.target_flops=0.2",
                 "max_new_tokens=2", "prompt=Hello", "logger=disk"]
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["tor_exp", *overrides, f"hydra.run.dir={tmp_path}"])
    try:
        entry.main()
    finally:
        GlobalHydra.instance().clear()
    assert counts == {"validate": 1, "solve": 1}
    results = json.loads((tmp_path / "results.json").read_text())
    monkeypatch.undo()
    v = compose(overrides)
    loaded, _ = load_model(v.model)
    direct = build_schedule(v.reduction, v.model, shape=model_shape(loaded))
    assert results["keep_ratio"] == direct.keep_ratio and results["locations"] == direct.locations
    assert 0.0 < direct.keep_ratio < 1.0


def test_a_schedule_solved_for_another_model_is_solved_again(monkeypatch) -> None:
    """Validation solves for the shape the config tells; a loaded model of another shape (a config that says
    the wrong depth) gets its own schedule."""
    v = compose(["model=tiny_nemotron_h", "reduction=utrc", "reduction.target_flops=0.2"])
    assert v.schedule is not None and v.solved_on is not None
    other = compose(["model=tiny_nemotron_h", "model.tiny.config.hybrid_override_pattern=MM-*M-M*"])
    loaded, _ = load_model(other.model)
    shape = model_shape(loaded)
    assert not holds_for(v.schedule, v.solved_on, v.reduction, v.model, shape)
    counts = _counting(monkeypatch)
    _, schedule = v.reduction_for(shape)
    assert counts["solve"] == 1
    assert schedule.keep_ratio == build_schedule(v.reduction, v.model, shape=shape).keep_ratio


def test_the_validated_config_is_not_changed_afterwards() -> None:
    """Validation resolves what it resolves into new objects (the root dtype override, eval.alignment); the
    result cannot be assigned to."""
    v = compose(["model=tiny_mamba2", "dtype=float16", "reduction=utrc"])
    assert v.model.dtype == "float16" and v.eval.alignment == "exact"
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.schedule = None  # type: ignore[misc]
    again = compose(["model=tiny_mamba2", "dtype=float16", "reduction=utrc"])  # validated once per text: a copy
    assert again == v and again.model is not v.model
    assert compose(["model=tiny_mamba2", "reduction=utrc"]).model.dtype == "float32"

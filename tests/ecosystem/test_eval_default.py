"""The eval default follows the model: hub checkpoints get the paper's six zero-shot tasks unless eval= (or an
experiment) says otherwise; the reference and tiny models keep the offline set."""
from __future__ import annotations

from pathlib import Path

import pytest

from tor_exp.evaluation.config import PAPER_TASKS

FIXTURES = ["lambada_fixture", "hellaswag_fixture", "piqa_fixture", "arc_easy_fixture", "arc_challenge_fixture",
            "winogrande_fixture"]
OFFLINE = ["reference_heldout", "reference_heldout_mc"]  # eval=offline: the reference model's own tasks
HUB_MODELS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "conf" / "model").glob("mamba*.yaml"))


def test_the_design_card_command_evaluates_the_six_paper_tasks(compose):
    v = compose("model=mamba2_2.7b", "reduction.q=0.5")  # README / design card, verbatim
    assert sorted(v.eval.tasks) == sorted(PAPER_TASKS) and len(v.eval.tasks) == 6
    assert v.eval.include_paths == [] and v.reduction.q == 0.5 and v.model.n_layer == 64


@pytest.mark.parametrize("model", HUB_MODELS)
def test_every_hub_checkpoint_defaults_to_zero_shot(compose, model):
    assert list(compose(f"model={model}").eval.tasks) == list(compose("eval=zero_shot").eval.tasks)


@pytest.mark.parametrize("args", [("model=mamba2_2.7b", "eval=fixtures"), ("eval=fixtures", "model=mamba2_2.7b")])
def test_an_explicit_eval_wins_in_either_order(compose, args):
    v = compose(*args)
    assert v.eval.tasks == FIXTURES and v.model.name == "mamba2-2.7b"


def test_dotted_eval_keys_apply_on_top_of_the_models_default(compose):
    v = compose("model=mamba_130m", "eval.limit=3")
    assert sorted(v.eval.tasks) == sorted(PAPER_TASKS) and v.eval.limit == 3


@pytest.mark.parametrize("args", [(), ("model=reference",), ("model=reference_hybrid",), ("model=reference_gdn",),
                                  ("model=tiny_mamba2",),
                                  ("model=tiny_mamba",)])
def test_reference_and_tiny_models_keep_the_offline_set(compose, args):
    assert compose(*args).eval.tasks == OFFLINE


def test_an_experiment_still_chooses_its_eval(compose):
    assert compose("model=mamba2_2.7b", "experiment=smoke").eval.tasks == ["lambada_fixture"]
    assert sorted(compose("experiment=table1_mamba2").eval.tasks) == sorted(PAPER_TASKS)

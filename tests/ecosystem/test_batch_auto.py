"""batch_size=auto as lm-eval's HFLM does it: the largest batch that fits the longest request, found with
accelerate's find_executable_batch_size; the scores do not change."""
from __future__ import annotations

import pytest
import torch

from tor_exp.errors import ConfigError
from tor_exp.evaluation.config import EvalConfig

TASKS = ["piqa_fixture", "lambada_fixture"]


@pytest.fixture(scope="module")
def tiny():
    from tor_exp.config import compose
    from tor_exp.models import load_model

    v = compose(["model=tiny_mamba2", "model.n_layer=4", "model.tiny.n_layer=4", "model.locations=[1,2]"])
    return load_model(v.model)


def _per_request(out) -> dict[tuple[str, int, int], float]:
    return {(task, s["doc_id"], i): float(resp[0][0]) for task, samples in out["samples"].items()
            for s in samples for i, resp in enumerate(s["resps"])}


def _evaluate(model, tok, **cfg):
    from tor_exp.evaluation.runner import evaluate

    return evaluate(model, tok, EvalConfig(tasks=TASKS, limit=4, bootstrap_iters=0, **cfg), reduction_label="x",
                    keep_samples=True)


def test_auto_detects_a_size_and_scores_as_a_fixed_batch(tiny, monkeypatch):
    from tor_exp.evaluation.lm import TorExpLM

    model, tok = tiny
    fixed = _evaluate(model, tok, batch_size=2)
    auto = _evaluate(model, tok, batch_size="auto", max_batch_size=16)
    # nothing runs out of memory on the CPU: the search keeps its starting size, as HFLM's does
    assert auto["config"]["batch_sizes"] == {"loglikelihood": 16} and fixed["config"]["batch_sizes"] == {}
    a, b = _per_request(auto), _per_request(fixed)
    assert set(a) == set(b) and max(abs(a[k] - b[k]) for k in a) < 1e-4

    # a device that runs out of memory above 5 rows: the search steps down (x0.9) to the first size that fits
    original = TorExpLM._model_call

    def limited(self, input_ids, valid, protected):
        if input_ids.shape[0] > 5:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1 GiB (simulated)")
        return original(self, input_ids, valid, protected)

    monkeypatch.setattr(TorExpLM, "_model_call", limited)
    small = _evaluate(model, tok, batch_size="auto", max_batch_size=16)
    assert small["config"]["batch_sizes"] == {"loglikelihood": 5}
    c = _per_request(small)
    assert max(abs(c[k] - b[k]) for k in c) < 1e-4


def test_auto_generation_matches_a_fixed_batch(tiny):
    from lm_eval.api.instance import Instance

    from tor_exp.evaluation.lm import TorExpLM

    model, tok = tiny
    requests = [Instance("generate_until", {}, (prompt, {"until": ["\n\n"], "max_gen_toks": 4}), i)
                for i, prompt in enumerate(["The fox", "A much longer prompt about the history of", "Hi"])]
    auto = TorExpLM(model, tok, batch_size="auto", max_batch_size=8)
    assert auto.generate_until(requests, disable_tqdm=True) == \
        TorExpLM(model, tok, batch_size=1).generate_until(requests, disable_tqdm=True)
    assert auto.batch_sizes == {"generate_until": 8}


@pytest.mark.parametrize("value", ["auto", "AUTO", 3, "3"])
def test_batch_size_accepts_auto_or_a_positive_integer(value):
    assert EvalConfig(batch_size=value).batch_size == (value.lower() if value in ("auto", "AUTO") else 3)


@pytest.mark.parametrize("value", [0, -1, "big", True, 1.5, "auto:4"])
def test_bad_batch_sizes_name_the_key(value):
    with pytest.raises(ConfigError, match="eval.batch_size"):
        EvalConfig(batch_size=value)


def test_auto_through_the_hydra_config(compose):
    v = compose("eval.batch_size=auto", "eval.max_batch_size=32")
    assert (v.eval.batch_size, v.eval.max_batch_size) == ("auto", 32)
    with pytest.raises(ConfigError, match="eval.max_batch_size"):
        compose("eval.max_batch_size=0")


def test_oom_detection_is_accelerates_rule():
    """Only out-of-memory errors step the size down; any other error surfaces."""
    from tor_exp.evaluation.lm import detect_batch_size

    def probe(n):
        if n > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.") if hasattr(torch.cuda, "OutOfMemoryError") \
                else RuntimeError("CUDA out of memory.")

    assert detect_batch_size(probe, 4) == 3
    with pytest.raises(ValueError):
        detect_batch_size(lambda n: (_ for _ in ()).throw(ValueError("bug")), 4)

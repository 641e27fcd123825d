"""lm-eval's own HFLM, pointed at a shipped model's folder (its own loading: AutoModelForCausalLM from the files,
fp32), gives every request of both reference tasks the log-likelihood tor_exp's backend gives with
``reduction=none``: the backend adds nothing when it does not reduce, on each of the three architectures."""
from __future__ import annotations

import pytest

from tor_exp.reference import ASSETS_DIR, GDN_DIR, HYBRID_DIR

SHIPPED = {"reference": ASSETS_DIR, "reference_hybrid": HYBRID_DIR, "reference_gdn": GDN_DIR}
TASKS = ["reference_heldout", "reference_heldout_mc"]
LIMIT = 4


def _simple_evaluate(model, model_args=None, **kw):
    import lm_eval

    from tor_exp.evaluation.runner import light_env_info, task_manager

    tm = task_manager(["pkg://tor_exp/reference/task"], TASKS)
    with light_env_info():
        return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=TASKS, limit=LIMIT, task_manager=tm,
                                       log_samples=True, bootstrap_iters=0, batch_size=4, device="cpu", **kw)


def _per_request(raw) -> dict[tuple[str, int, int], float]:
    return {(task, s["doc_id"], i): float(resp[0][0])
            for task, samples in raw["samples"].items() for s in samples for i, resp in enumerate(s["resps"])}


# the Gated DeltaNet reference in the default suite; the other two (their backends are compared with HFLM on the
# same tasks by launchers/lm_overhead.py and tests/bench/test_lm_overhead.py) with -m slow
@pytest.mark.parametrize("which", [pytest.param("reference", marks=pytest.mark.slow),
                                   pytest.param("reference_hybrid", marks=pytest.mark.slow), "reference_gdn"])
def test_hflm_on_the_shipped_folder_equals_the_backend_without_reduction(which, monkeypatch, tmp_path):
    import torch

    import tor_exp.lm_eval  # noqa: F401  (registers the name "tor_exp")

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    ours = _per_request(_simple_evaluate("tor_exp", f"model={which},reduction=none"))
    theirs = _per_request(_simple_evaluate("hf", f"pretrained={SHIPPED[which]},dtype=float32"))
    assert set(ours) == set(theirs) and len(ours) == LIMIT * (1 + 4)
    # in nats per request (sums of up to ~100 byte log-probabilities): CPU kernels may order float32 sums differently
    assert max(abs(ours[k] - theirs[k]) for k in ours) <= 1e-3
    assert all(v < 0 for v in ours.values())

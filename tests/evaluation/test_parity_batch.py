"""Parity mode is defined per request (METHOD.md §6): a batched lm-eval run gives every request its batch-1 score.

Before the per-request rule the padded batch was the sequence: padding entered the metric (NaN / −inf), the sort
and the matching, and the fixture scores moved by up to hundreds of nats between batch sizes 1 and 8.
"""
from __future__ import annotations

import pytest

from eval_helpers import LOCATIONS, fixture_requests
from tor_exp.evaluation.config import FIXTURE_TASKS
from tor_exp.evaluation.lm import TorExpLM
from tor_exp.models import Schedule, patch, unpatch
from tor_exp.reduction import build_method
from tor_exp.reduction.parity import EViTParityConfig, PuMerParityConfig, UTRCParityConfig

KEEP_RATIO = 0.8  # short fixture prompts still reduce at both locations; long continuations still fit (offset)


@pytest.fixture(scope="module")
def requests():
    return fixture_requests(list(FIXTURE_TASKS), limit=4)


@pytest.mark.parametrize("cfg", [UTRCParityConfig(), EViTParityConfig(), PuMerParityConfig()],
                         ids=lambda c: c.method)
def test_batch_1_and_batch_8_score_every_request_identically(tiny, requests, cfg):
    model, tok = tiny
    patch(model, build_method(cfg), Schedule(locations=LOCATIONS, keep_ratio=KEEP_RATIO))
    try:
        one = TorExpLM(model=model, tokenizer=tok, batch_size=1)  # alignment auto ⇒ offset for parity
        eight = TorExpLM(model=model, tokenizer=tok, batch_size=8)
        r1 = one.loglikelihood(requests, disable_tqdm=True)
        r8 = eight.loglikelihood(requests, disable_tqdm=True)
    finally:
        unpatch(model)
    assert one.alignment == eight.alignment == "offset"
    assert {r.task_name for r in requests} == set(FIXTURE_TASKS)
    for req, (a, ga), (b, gb) in zip(requests, r1, r8):
        assert a == pytest.approx(b, abs=1e-5, rel=1e-6), (req.task_name, req.args)
        assert ga == gb, (req.task_name, req.args)
    # every task really reduced and scored something, identically counted at both batch sizes
    assert one.stats_dict() == eight.stats_dict()
    for task in FIXTURE_TASKS:
        assert one.stats_dict()[task]["realised_reduction"] > 0.05, task
        assert any(a != 0 for req, (a, _) in zip(requests, r1) if req.task_name == task), task

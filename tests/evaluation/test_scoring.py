"""The one scorer (tor_exp.evaluation.scoring) against the plain model's log-probabilities and the offset rule."""
from __future__ import annotations

import math

import pytest
import torch

from tor_exp.evaluation.scoring import pack, protected_mask, score_continuations
from tor_exp.models.patching import reduced_forward

FULLS = [list(b"abcdefghij"), list(b"hello world, hi")]
CONT_LENS = [3, 4]


def _pairs():
    return [(full[:-k], full[-k:]) for full, k in zip(FULLS, CONT_LENS)]


def test_pack_builds_the_causal_recipe() -> None:
    batch = pack(_pairs(), max_length=64, pad_id=257)
    assert batch.input_ids[0].tolist() == FULLS[0][:-1] + [257] * 5
    assert batch.valid.sum(1).tolist() == [9, 14]
    assert batch.target_positions()[0].tolist()[:3] == [6, 7, 8]
    assert protected_mask(batch, "exact")[0].tolist() == [False] * 6 + [True] * 8  # scored positions + padding
    assert protected_mask(batch, "offset")[0].tolist() == [False] * 9 + [True] * 5
    # max_length keeps the end of context + continuation
    assert pack([(list(range(10)), [10, 11])], max_length=5, pad_id=0).input_ids[0].tolist() == [6, 7, 8, 9, 10]


@torch.no_grad()
def test_exact_gather_equals_direct_logprobs_and_offset_reads_the_last_rows(tiny) -> None:
    model, _ = tiny
    batch = pack(_pairs(), max_length=64, pad_id=257)
    out = reduced_forward(model, batch.input_ids, batch.valid.long(), protected_mask(batch, "exact"))
    scores = score_continuations(out.logits, out.positions, out.valid, batch, "exact")
    for b, (full, k) in enumerate(zip(FULLS, CONT_LENS)):
        logp = torch.log_softmax(model(input_ids=torch.tensor([full[:-1]])).logits[0].double(), -1)
        want = sum(float(logp[t - 1, full[t]]) for t in range(len(full) - k, len(full)))
        assert math.isclose(float(scores.logprob[b]), want, rel_tol=1e-4, abs_tol=1e-4)
        greedy = all(int(logp[t - 1].argmax()) == full[t] for t in range(len(full) - k, len(full)))
        assert bool(scores.greedy[b]) == greedy
    assert not scores.misaligned.any() and not scores.short.any()

    # drop original position 7 of row 0 (a scored one)
    keep = [i for i in range(out.logits.shape[1]) if i != 7]
    logits, positions, valid = out.logits.clone(), out.positions.clone(), out.valid.clone()
    n = len(keep)
    logits[0, :n], positions[0, :n], valid[0, :n] = out.logits[0, keep], out.positions[0, keep], out.valid[0, keep]
    positions[0, n:], valid[0, n:] = -1, False
    with pytest.raises(RuntimeError, match="protected"):
        score_continuations(logits, positions, valid, batch, "exact")
    offset = score_continuations(logits, positions, valid, batch, "offset")
    assert offset.misaligned.tolist() == [True, False]
    lp = torch.log_softmax(logits[0].float(), -1)
    n_valid = int(valid[0].sum())
    want0 = sum(float(lp[n_valid - 3 + j, FULLS[0][7 + j]]) for j in range(3))
    assert math.isclose(float(offset.logprob[0]), want0, rel_tol=1e-5)
    assert math.isclose(float(offset.logprob[1]), float(scores.logprob[1]), rel_tol=1e-6)


def test_offset_rule_scores_a_too_short_row_zero_and_correct() -> None:
    batch = pack([([1, 2], [3, 4, 5])], max_length=64, pad_id=0)  # input of 4 tokens, 3 scored
    logits = torch.randn(1, 2, 8)
    positions, valid = torch.tensor([[2, 3]]), torch.tensor([[True, True]])  # only 2 survive < 3 continuation
    scores = score_continuations(logits, positions, valid, batch, "offset")
    assert scores.short.tolist() == [True] and scores.logprob.tolist() == [0.0] and scores.greedy.tolist() == [True]
    assert scores.empty.tolist() == [False] and scores.misaligned.tolist() == [False]

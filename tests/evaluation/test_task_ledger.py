"""The per-task FLOPs/token ledger against hand-computed counts, and the backend handing it each request's task."""
from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM

from tor_exp.evaluation.ledger import Ledger, TaskStats
from tor_exp.evaluation.lm import TorExpLM
from tor_exp.evaluation.scoring import Scores
from tor_exp.models import ModelConfig, TinyModelConfig
from tor_exp.models.flops import layer_flops
from tor_exp.models.loading import shape_from_model_config

LAYERS = 4


def _shape(family: str):
    tiny = TinyModelConfig(d_model=32, n_layer=LAYERS, state_size=8, head_dim=8, chunk_size=16)
    return shape_from_model_config(ModelConfig(name=f"t_{family}", family=family, source="tiny", n_layer=LAYERS,
                                               locations=[1], tiny=tiny, seed=0))


def _scores(short, misaligned, empty) -> Scores:
    n = len(short)
    return Scores(logprob=torch.zeros(n), greedy=torch.ones(n, dtype=torch.bool), short=torch.tensor(short),
                  misaligned=torch.tensor(misaligned), empty=torch.tensor(empty))


def test_counts_by_hand() -> None:
    """Two batches and a generation on a uniform model (Mamba-2: every layer costs c FLOPs per token)."""
    shape = _shape("mamba2")
    assert shape.uniform
    c = layer_flops(shape, 1)
    ledger = Ledger(shape, LAYERS)
    ledger.count_scored(["a", "b", "a"], [5, 4, 3], torch.tensor([[5, 5, 3, 3], [4, 4, 4, 2], [3, 3, 1, 1]]),
                        rolling=False)
    ledger.count_scored(["b", None], torch.tensor([6, 7]), torch.tensor([[6, 6, 6, 6], [7, 7, 0, 0]]), rolling=True)
    ledger.count_generated(["a", None, "c"])
    got = ledger.as_dict()
    assert list(got) == ["a", "b", "c"]  # the padding copies (None) are counted nowhere
    a, b, g = got["a"], got["b"], got["c"]
    # a: rows of 5 and 3 input tokens, 16 + 8 layer-tokens of 4 * 8; one generated request
    assert (a["requests"], a["loglikelihood_requests"], a["rolling_requests"], a["generate_requests"]) == (3, 2, 0, 1)
    assert (a["input_tokens"], a["layer_tokens_full"], a["layer_tokens_real"]) == (8, 32.0, 24.0)
    assert (a["flops_full"], a["flops_real"]) == (pytest.approx(32 * c, rel=1e-12), pytest.approx(24 * c, rel=1e-12))
    assert a["realised_tokens"] == pytest.approx(0.25, abs=1e-12)
    assert a["realised_reduction"] == pytest.approx(0.25, abs=1e-12)
    # b: 4 input tokens (14 reach the layers) and a rolling window of 6 (all 24)
    assert (b["requests"], b["loglikelihood_requests"], b["rolling_requests"]) == (2, 1, 1)
    assert (b["input_tokens"], b["layer_tokens_full"], b["layer_tokens_real"]) == (10, 40.0, 38.0)
    assert b["realised_reduction"] == pytest.approx(1 - 38 / 40, abs=1e-12)
    # c: generated only: counted, no FLOPs measured
    assert (g["requests"], g["generate_requests"], g["input_tokens"], g["realised_reduction"]) == (1, 1, 0, 0.0)
    assert all(s["offset_short"] == s["offset_empty"] == s["offset_misaligned"] == 0 for s in got.values())
    ledger.clear()
    assert ledger.as_dict() == {}


def test_hybrid_reduction_is_flop_weighted() -> None:
    """Jamba (Mamba, attention and MoE layers of different costs): the FLOPs are each layer's own cost at its own
    token count, so the realised reduction differs from the token ratio."""
    shape = _shape("jamba")
    assert not shape.uniform
    counts = [6, 6, 6, 1]  # the reduced layer 3 costs more per token than the average
    ledger = Ledger(shape, LAYERS)
    ledger.count_scored(["h"], [6], torch.tensor([counts]), rolling=False)
    s = ledger.as_dict()["h"]
    real = sum(layer_flops(shape, n, layer=l) for l, n in enumerate(counts))
    full = sum(layer_flops(shape, 6, layer=l) for l in range(LAYERS))
    assert s["flops_real"] == pytest.approx(real, rel=1e-9) and s["flops_full"] == pytest.approx(full, rel=1e-9)
    assert s["realised_reduction"] == pytest.approx(1 - real / full, abs=1e-9)
    assert s["realised_tokens"] == pytest.approx(1 - 19 / 24, abs=1e-12)
    assert abs(s["realised_reduction"] - s["realised_tokens"]) > 0.03


def test_offset_flags_by_hand() -> None:
    ledger = Ledger(_shape("mamba2"), LAYERS)
    ledger.count_scored(["a", "a", "a", None], [2, 2, 2, 2], torch.full((4, LAYERS), 2), rolling=False,
                        offset=_scores(short=[True, True, False, True], misaligned=[False, False, True, True],
                                       empty=[True, False, False, True]))
    s = ledger.as_dict()["a"]
    assert (s["offset_short"], s["offset_empty"], s["offset_misaligned"]) == (2, 1, 1)


@pytest.mark.parametrize("rows,layers,lengths", [(2, LAYERS + 1, 2), (2, LAYERS - 1, 2), (3, LAYERS, 2),
                                                 (2, LAYERS, 3)])
def test_counts_of_another_shape_are_refused(rows, layers, lengths) -> None:
    """[B, L] only: a [B, L+1] count (once accepted, its last entry dropped) is an error like any other."""
    ledger = Ledger(_shape("mamba2"), LAYERS)
    with pytest.raises(ValueError, match=rf"expected \[2, {LAYERS}\]"):
        ledger.count_scored(["a", "b"], [3] * lengths, torch.ones(rows, layers), rolling=False)
    assert ledger.as_dict() == {}


def test_gathered_sums_the_shards() -> None:
    r0, r1 = Ledger(_shape("mamba2"), LAYERS), Ledger(_shape("mamba2"), LAYERS)
    r0.tasks = {"t": TaskStats(requests=1, input_tokens=3, layer_tokens_full=12.0, layer_tokens_real=9.0)}
    r1.tasks = {"t": TaskStats(requests=2, input_tokens=5, layer_tokens_full=20.0, layer_tokens_real=11.0),
                "u": TaskStats(requests=1, generate_requests=1)}
    got = r0.gathered(lambda shard: [shard, r1.tasks])
    assert (got["t"]["requests"], got["t"]["input_tokens"], got["t"]["layer_tokens_real"]) == (3, 8, 20.0)
    assert got["t"]["realised_tokens"] == pytest.approx(1 - 20 / 32, abs=1e-12)
    assert got["u"] == r1.as_dict()["u"]
    assert r0.gathered(lambda shard: None) == {}  # a rank that does not collect


# ------------------------------------------------------------------------------ the backend names each task
def _req(ctx: str, cont: str, task: str, i: int) -> Instance:
    return Instance("loglikelihood", {}, (ctx, cont), i, metadata=(task, i, 1))


def test_tokenization_is_lm_eval_s(tiny) -> None:
    """The backend tokenizes loglikelihood requests itself (to keep each one's task beside it): the same pairs as
    lm-eval's ``TemplateLM.loglikelihood``, empty contexts included (prefix token, or the continuation's first
    token when that is the prefix token)."""
    model, tok = tiny
    reqs = [_req("The cat", " sat down", "t", 0), _req("", "hello", "t", 1), _req("", "abc", "t", 2)]
    for prefix in (None, ord("h")):
        lm = TorExpLM(model=model, tokenizer=tok, prefix_token_id=prefix)
        theirs: list = []
        lm._loglikelihood_tokens = lambda pairs, disable_tqdm=False: theirs.extend(pairs) or [(0.0, True)] * len(pairs)
        TemplateLM.loglikelihood(lm, reqs, disable_tqdm=True)
        ours = [(tuple(r.args), *TorExpLM._encode_request(lm, *r.args)) for r in reqs]
        assert ours == theirs and len(ours) == 3
    assert theirs[1][1:] == ([ord("h")], [ord(ch) for ch in "ello"])  # the prefix-token case was reached


def test_padding_copies_are_answered_not_counted(tiny) -> None:
    """A data-parallel rank (world size 2) scores lm-eval's padding copy (the same Instance again) but its ledger
    equals one process's over the real requests, each under its own task."""
    model, tok = tiny
    a, b = _req("One two", " three", "ta", 0), _req("Four", " five six", "tb", 1)
    one = TorExpLM(model=model, tokenizer=tok, batch_size=2)
    want = one.loglikelihood([a, b], disable_tqdm=True)
    rank = TorExpLM(model=model, tokenizer=tok, batch_size=2)
    rank._world_size = 2
    got = rank.loglikelihood([a, b, b], disable_tqdm=True)
    assert got[:2] == want and got[2] == want[1]
    assert rank.stats_dict() == one.stats_dict()
    assert sorted(one.stats_dict()) == ["ta", "tb"] and one.stats_dict()["tb"]["requests"] == 1

"""The lm-eval backend: parity with lm-eval's HFLM, batch invariance, exact and offset alignment, FLOPs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance

from tor_exp.evaluation.config import FIXTURE_TASKS
from tor_exp.evaluation.lm import TorExpLM
from tor_exp.models.patching import reduced_forward

from eval_helpers import N_LAYER, fixture_requests


@pytest.fixture(scope="module")
def requests():
    return fixture_requests(list(FIXTURE_TASKS), limit=3)


@pytest.fixture(scope="module")
def some_requests(requests):
    """Every other request (all six tasks still present): keeps the batch-size-1 tests fast."""
    return requests[::2]


def _hflm(model, tok, **kw):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tok, batch_size=kw.pop("batch_size", 8), **kw)


def test_registered_with_lm_eval():
    from lm_eval.api.registry import get_model
    from lm_eval.models.huggingface import HFLM

    from tor_exp.lm_eval import TorExpByName

    assert get_model("tor_exp") is TorExpByName and issubclass(TorExpByName, TorExpLM)
    assert get_model("hf") is HFLM  # lm-eval's own models still resolve after ours is registered


def test_only_the_entry_point_registers_the_name():
    """``tor_exp.evaluation.lm`` (the backend over an in-memory model) registers nothing; ``tor_exp.lm_eval``
    registers ``tor_exp`` (a fresh interpreter: this session has imported both already)."""
    import subprocess
    import sys

    code = ("import tor_exp.evaluation.lm\n"
            "from lm_eval.api.registry import MODEL_REGISTRY\n"
            "print('tor_exp' in MODEL_REGISTRY)\n"
            "import tor_exp.lm_eval\n"
            "print('tor_exp' in MODEL_REGISTRY)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]


def test_reduction_none_matches_hflm(tiny, requests):
    """Same tiny model, same fixture requests: TorExpLM (reduced_forward, unpatched) == lm-eval's HFLM."""
    model, tok = tiny
    ours = TorExpLM(model=model, tokenizer=tok, batch_size=8).loglikelihood(requests, disable_tqdm=True)
    ref = _hflm(model, tok).loglikelihood(requests, disable_tqdm=True)
    assert len(ours) == len(ref) == len(requests) > 45
    for (a, ga), (b, gb) in zip(ours, ref):
        assert a == pytest.approx(b, abs=1e-5, rel=1e-6)
        assert ga == gb


@pytest.mark.parametrize("alignment", ["exact", "offset"])
def test_batch_invariance_under_reduction(patched, some_requests, alignment):
    model, tok = patched
    requests = some_requests
    one = TorExpLM(model=model, tokenizer=tok, batch_size=1, alignment=alignment)
    many = TorExpLM(model=model, tokenizer=tok, batch_size=32, alignment=alignment)
    r1 = one.loglikelihood(requests, disable_tqdm=True)
    r32 = many.loglikelihood(requests, disable_tqdm=True)
    diff = max(abs(a - b) for (a, _), (b, _) in zip(r1, r32))
    assert diff < 1e-4
    assert [g for _, g in r1] == [g for _, g in r32]
    assert one.stats_dict() == many.stats_dict()  # token counts and alignment counts agree too
    assert all(0.05 < s["realised_reduction"] < 0.75 for s in one.stats_dict().values())


def test_exact_alignment_equals_manual_reduced_forward(patched, some_requests):
    """Each request's score = an independent batch-1 reduced_forward with the scored positions protected,
    logits picked at the scored positions; per-task realised FLOPs = 1 − Σ tokens / (L Σ n)."""
    from tor_exp.models import reduced_forward

    model, tok = patched
    requests = some_requests
    lm = TorExpLM(model=model, tokenizer=tok, batch_size=32)
    got = lm.loglikelihood(requests, disable_tqdm=True)
    real = {}
    full = {}
    reduced_any = 0
    for req, (value, greedy) in zip(requests, got):
        context, continuation = req.args
        ctx = tok.encode(context)
        whole = tok.encode(context + continuation)
        cont = whole[len(ctx):]
        inp = torch.tensor(whole[:-1])[None]
        n, c = inp.shape[1], len(cont)
        protected = torch.zeros_like(inp, dtype=torch.bool)
        protected[0, n - c:] = True
        with torch.no_grad():
            out = reduced_forward(model, inp, torch.ones_like(inp), protected)
        positions = out.positions[0].tolist()
        total, all_greedy = 0.0, True
        for k in range(c):  # explicit loops: the reference is deliberately naive
            j = positions.index(n - c + k)
            lp = F.log_softmax(out.logits[0, j].double(), dim=-1)
            total += float(lp[cont[k]])
            all_greedy &= int(lp.argmax()) == cont[k]
        assert value == pytest.approx(total, abs=1e-4)
        assert greedy == all_greedy
        counts = out.tokens_per_layer[0].tolist()
        reduced_any += counts[-1] < n
        real[req.task_name] = real.get(req.task_name, 0) + sum(counts)
        full[req.task_name] = full.get(req.task_name, 0) + N_LAYER * n
    assert reduced_any > len(requests) // 2  # the check is meaningful: most requests lost tokens
    for task, s in lm.stats_dict().items():
        assert s["realised_reduction"] == pytest.approx(1 - real[task] / full[task], abs=1e-12)
        assert s["offset_short"] == s["offset_misaligned"] == 0


# --------------------------------------------------------------------------------------------- offset rule
def keep_even_from_two(model, input_ids, attention_mask=None, protected=None, logits="all"):
    """A hand-made 'reduction': after layer 0 keep only positions p >= 2 with p even (ignores protection)."""
    full = reduced_forward(model, input_ids, attention_mask)  # unpatched: every position
    b, n = input_ids.shape
    valid = attention_mask.bool()
    keep = valid & (torch.arange(n)[None] % 2 == 0) & (torch.arange(n)[None] >= 2)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept first, in order
    kept = keep.gather(1, order)
    positions = torch.where(kept, order, torch.full_like(order, -1))
    out_logits = full.logits.gather(1, order[..., None].expand(-1, -1, full.logits.shape[-1]))
    per_layer = torch.cat([valid.sum(1, keepdim=True), keep.sum(1, keepdim=True).expand(b, N_LAYER - 1)], 1)
    return type(full)(logits=out_logits, positions=positions, valid=kept, tokens_per_layer=per_layer,
                      n_input=full.n_input)


class HandMadeLM(TorExpLM):
    """The backend with :func:`keep_even_from_two` as its model call."""

    def _model_call(self, input_ids, valid, protected):
        return keep_even_from_two(self.model, input_ids, valid.long(), protected)


def _req(ctx, cont, i):
    return Instance("loglikelihood", {}, (ctx, cont), i, metadata=("hand", i, 1))


@pytest.mark.parametrize("batch_size", [1, 8])
def test_offset_rule_on_hand_made_cases(tiny, batch_size):
    model, tok = tiny
    cases = [
        ("abcdefg", "hij"),  # inplen 9, kept 2,4,6,8 -> last 3 = positions 4,6,8 (exact 6,7,8): misaligned
        ("ab", "cdefgh"),    # inplen 7, kept 2,4,6: 3 < 6 -> short: scored 0, greedy
        ("abcd", "e"),       # inplen 4, kept 2: position 2 (exact 3): misaligned
        ("abcde", "f"),      # inplen 5, kept 2,4: position 4 = exact: aligned
        ("a", "b"),          # inplen 1, nothing kept -> empty (and short)
    ]
    reqs = [_req(c, x, i) for i, (c, x) in enumerate(cases)]
    lm = HandMadeLM(model=model, tokenizer=tok, batch_size=batch_size, alignment="offset")
    got = lm.loglikelihood(reqs, disable_tqdm=True)

    @torch.no_grad()
    def lp_full(text):
        ids = torch.tensor(tok.encode(text))[None]
        return F.log_softmax(model(ids).logits[0].double(), -1)

    lp = lp_full("abcdefghij")
    expected0 = float(lp[4, ord("h")] + lp[6, ord("i")] + lp[8, ord("j")])
    assert got[0][0] == pytest.approx(expected0, abs=1e-4)
    assert got[1] == (0.0, True)
    assert got[2][0] == pytest.approx(float(lp_full("abcde")[2, ord("e")]), abs=1e-4)
    assert got[3][0] == pytest.approx(float(lp_full("abcdef")[4, ord("f")]), abs=1e-4)
    assert got[4] == (0.0, True)
    s = lm.stats_dict()["hand"]
    assert (s["offset_short"], s["offset_empty"], s["offset_misaligned"]) == (2, 1, 2)
    # tokens: layer 0 sees every input token, later layers only the kept ones
    inplens, kept = [9, 7, 4, 5, 1], [4, 3, 1, 2, 0]
    assert s["layer_tokens_real"] == sum(n + (N_LAYER - 1) * k for n, k in zip(inplens, kept))
    assert s["layer_tokens_full"] == N_LAYER * sum(inplens)


def test_exact_alignment_refuses_a_reduction_that_drops_scored_positions(tiny):
    model, tok = tiny
    lm = HandMadeLM(model=model, tokenizer=tok, alignment="exact")
    with pytest.raises(RuntimeError, match="protected"):
        lm.loglikelihood([_req("abcdefg", "hij", 0)], disable_tqdm=True)


# --------------------------------------------------------------------------------------------- rolling / generation
TEXTS = ["The lighthouse keeper climbed the spiral stairs every evening at dusk and lit the great lamp. " * 2,
         "Short one."]


def _rolling_reqs():
    return [Instance("loglikelihood_rolling", {}, (t,), i, metadata=("roll", i, 1)) for i, t in enumerate(TEXTS)]


def test_rolling_matches_hflm_and_is_never_reduced(tiny, patched):
    model, tok = patched
    ours = TorExpLM(model=model, tokenizer=tok, batch_size=4, max_length=64)
    got = ours.loglikelihood_rolling(_rolling_reqs(), disable_tqdm=True)
    assert all(isinstance(x, float) for x in got)
    s = ours.stats_dict()["roll"]
    assert s["realised_reduction"] == 0.0 and s["rolling_requests"] == s["requests"] >= 4  # several windows
    from tor_exp.models import unpatch

    unpatch(model)  # the fixture's finaliser tolerates an already-unpatched model
    ref = _hflm(model, tok, batch_size=4, max_length=64).loglikelihood_rolling(_rolling_reqs(), disable_tqdm=True)
    assert got == pytest.approx(ref, abs=1e-4)


def test_generate_until_matches_hflm(tiny):
    model, tok = tiny
    reqs = [Instance("generate_until", {}, (ctx, {"until": ["e"], "max_gen_toks": 6, "do_sample": False}), i,
                     metadata=("gen", i, 1)) for i, ctx in enumerate(["Question: why?\nAnswer:", "Hi"])]
    ours = TorExpLM(model=model, tokenizer=tok, batch_size=2).generate_until(reqs, disable_tqdm=True)
    ref = _hflm(model, tok, batch_size=2).generate_until(reqs, disable_tqdm=True)
    assert ours == ref
    assert all("e" not in text for text in ours)


def test_the_model_is_called_in_model_call_and_model_generate_only(tiny, some_requests, monkeypatch):
    """Scoring reaches the model through ``_model_call`` and generation through ``_model_generate`` only, the
    ``batch_size=auto`` probes included (lm-eval's HFLM has the same two methods for the same reason)."""
    import tor_exp.evaluation.lm as lm_module

    model, tok = tiny
    inside: list[str] = []  # the TorExpLM method each model call runs in
    seen: list[tuple[str, tuple[str, ...]]] = []

    for name in ("_model_call", "_model_generate"):
        def wrapped(self, *args, _original=getattr(TorExpLM, name), _name=name, **kwargs):
            inside.append(_name)
            try:
                return _original(self, *args, **kwargs)
            finally:
                inside.pop()
        monkeypatch.setattr(TorExpLM, name, wrapped)

    def record(kind, call):
        def recorded(*args, **kwargs):
            seen.append((kind, tuple(inside)))
            return call(*args, **kwargs)
        return recorded

    monkeypatch.setattr(lm_module, "reduced_forward", record("reduced_forward", lm_module.reduced_forward))
    monkeypatch.setattr(model, "generate", record("generate", model.generate))
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(("forward", tuple(inside))))
    try:
        lm = TorExpLM(model=model, tokenizer=tok, batch_size="auto", max_batch_size=4)
        lm.loglikelihood(some_requests[:6], disable_tqdm=True)
        lm.generate_until([Instance("generate_until", {}, ("Hi", {"until": ["e"], "max_gen_toks": 3}), 0,
                                    metadata=("gen", 0, 1))], disable_tqdm=True)
    finally:
        hook.remove()
    kinds = {kind for kind, _ in seen}
    assert {"reduced_forward", "generate", "forward"} <= kinds
    assert set(lm.batch_sizes) == {"loglikelihood", "generate_until"}  # both probes ran
    home = {"reduced_forward": "_model_call", "generate": "_model_generate"}  # a plain forward: either
    for kind, stack in seen:
        assert stack, f"{kind} called outside _model_call / _model_generate"
        assert stack[-1] == home.get(kind, stack[-1]), (kind, stack)

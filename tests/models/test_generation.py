"""Generation: reduced prefill (last prompt token protected), unreduced decode with consistent caches."""
from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

from tor_exp.models.schedule import Schedule
from tor_exp.models.generation import decode_step, generate_text, prefill
from tor_exp.models.patching import get_patch, patch, reduced_forward

from _tiny_methods import KeepFirst, MergeRight
from conftest import LOCATIONS, random_ids

STEPS = 5


def hf_generate(model, ids, mask=None):
    mask = torch.ones_like(ids) if mask is None else mask
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=STEPS, do_sample=False,
                          pad_token_id=257, output_logits=True, return_dict_in_generate=True)


@torch.no_grad()
def test_keep_ratio_one_equals_unpatched_generate(model):
    ids = random_ids(1, 30, seed=11)
    plain = hf_generate(model, ids)
    patch(model, MergeRight(), Schedule(LOCATIONS, 1.0))
    reduced = hf_generate(model, ids)
    assert torch.equal(plain.sequences, reduced.sequences)
    for a, b in zip(plain.logits, reduced.logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_greedy_equals_step_by_step_recomputation(model):
    """For each new token: rerun the reduced prefill over the prompt, then feed the tokens generated so far
    one by one through every layer's cached state, and take the argmax."""
    ids = random_ids(1, 33, seed=12)
    method, schedule = MergeRight(), Schedule(LOCATIONS, 0.5)
    patch(model, method, schedule)
    out = hf_generate(model, ids)
    generated = out.sequences[0, ids.shape[1]:].tolist()
    original_cls = get_patch(model).original_class
    tokens: list[int] = []
    for step in range(STEPS):
        cache = DynamicCache(config=model.config)
        last = torch.zeros_like(ids, dtype=torch.bool)
        last[0, -1] = True
        pre = reduced_forward(model, ids, protected=last, logits="last", cache=cache)
        logits = pre.logits[:, -1]
        assert pre.positions[0, -1].item() == ids.shape[1] - 1  # the last prompt token survived as itself
        for tok in tokens:
            logits = original_cls.forward(model, input_ids=torch.tensor([[tok]]), cache=cache, use_cache=True).logits[:, -1]
        torch.testing.assert_close(logits, out.logits[step], rtol=1e-5, atol=1e-5)
        tokens.append(int(logits.argmax(-1)))
    assert tokens == generated
    assert pre.tokens_per_layer[0, -1] < ids.shape[1]  # the prefill really was reduced


@torch.no_grad()
def test_decode_states_match_the_reduced_sequence(model):
    """Decode logits equal a single reduced forward over prompt + generated tokens in which the generated
    tokens and the last prompt token are protected: then every layer saw exactly the same tokens, so each
    cache (conv window + SSM state) must be the one of that layer's shortened sequence."""
    ids = random_ids(1, 41, seed=13)
    method, schedule = KeepFirst(), Schedule(LOCATIONS, 0.5)
    patch(model, method, schedule)
    pre = prefill(model, ids)
    step_logits, tok = [pre.logits[:, -1]], []
    for _ in range(STEPS - 1):
        tok.append(int(step_logits[-1].argmax(-1)))
        step_logits.append(decode_step(model, torch.tensor([tok[-1]]), pre.cache))
    full = torch.cat([ids, torch.tensor([tok])], dim=1)
    protected = torch.zeros_like(full, dtype=torch.bool)
    protected[0, ids.shape[1] - 1:] = True
    ref = reduced_forward(model, full, protected=protected)
    n = len(step_logits)
    assert ref.positions[0, -n:].tolist() == list(range(ids.shape[1] - 1, full.shape[1]))
    torch.testing.assert_close(ref.logits[0, -n:], torch.cat(step_logits), rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_left_padded_batch_generation_equals_each_row(model, tiny_models, family):
    tok = tiny_models[family][1]
    patch(model, MergeRight(), Schedule(LOCATIONS, 0.6))
    prompts = ["the quick brown fox jumps over", "a lazy dog"]
    batch = generate_text(model, tok, prompts, max_new_tokens=STEPS)
    alone = [generate_text(model, tok, p, max_new_tokens=STEPS) for p in prompts]
    assert batch == alone
    # and the cache path (left alignment) gives the same last-token logits as the row alone
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    both = prefill(model, enc["input_ids"], enc["attention_mask"])
    one = prefill(model, tok(prompts[1:], return_tensors="pt")["input_ids"])
    torch.testing.assert_close(both.logits[1], one.logits[0], rtol=1e-4, atol=1e-4)
    for layer in range(len(model.backbone.layers)):
        torch.testing.assert_close(both.cache.layers[layer].conv_states[0][1], one.cache.layers[layer].conv_states[0][0],
                                   rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(both.cache.layers[layer].recurrent_states[0][1],
                                   one.cache.layers[layer].recurrent_states[0][0], rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_generate_without_cache_reduces_every_step_and_keeps_the_last_token(model):
    ids = random_ids(1, 30, seed=14)
    patch(model, MergeRight(), Schedule(LOCATIONS, 0.5))
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False,
                         pad_token_id=257, use_cache=False)
    seq = ids
    for _ in range(3):
        protected = torch.zeros_like(seq, dtype=torch.bool)
        protected[0, -1] = True
        step = reduced_forward(model, seq, protected=protected, logits="last")
        assert step.positions[0, 0].item() == seq.shape[1] - 1
        seq = torch.cat([seq, step.logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_long_generation_shows_a_token_progress_bar(tiny_models, capsys):
    """task=generate with many new tokens is never silent: a tqdm bar of new tokens (shown after a few seconds; here
    at once)."""
    from tor_exp.models.generation import TokenProgress, generate_text

    model, tok = tiny_models["mamba2"]
    generate_text(model, tok, "abc", max_new_tokens=5, streamer=TokenProgress(5, delay_s=0))
    err = capsys.readouterr().err
    assert "generating" in err and "/5 " in err

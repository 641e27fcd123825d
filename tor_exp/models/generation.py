"""Generation with token reduction: reduce during the prefill only, decode unreduced (METHOD.md §5).

A patched model's ``forward`` (see :mod:`tor_exp.models.patching`) already does the right thing under HF's
``generate``: the prefill arrives with an empty cache, so it is reduced — with each row's last prompt token
protected, since it predicts the first new token — and every block writes its conv window and SSM state (and,
in a hybrid, its keys and values) for exactly the (shorter) sequence that block saw; decode steps arrive with a
filled cache and run unreduced, one token at a time: the unmodified HF forward for the SSM families, the
backbone loop's decode for hybrids (each attention layer attends to its own cached tokens, at the original
positions). Batched prompts should be left-padded (HF's convention for generation); the prefill left-aligns each
layer's tokens before a block that fills a cache, so padding never enters a state.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn
from tor_exp.models.backbone import decode
from tor_exp.models.families import adapter_of
from tor_exp.models.patching import ReducedOutput, get_patch, reduced_forward
from tor_exp.models.tokens import protect_last


def prefill(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Optional[Tensor] = None,
    protected: Optional[Tensor] = None,
) -> ReducedOutput:
    """Reduced prefill of a (patched or plain) model: last-token logits [B, 1, V] and the filled cache.

    The last real token of every row is protected in addition to ``protected``.
    """
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    protected = protect_last(valid, 1, protected)
    cache = adapter_of(model).new_cache(model)
    return reduced_forward(model, input_ids, attention_mask, protected, logits="last", cache=cache)


def decode_step(model: nn.Module, token: Tensor, cache: Any) -> Tensor:
    """One unreduced decode step [B] → logits [B, V], updating ``cache`` in place (the original HF forward for the
    SSM families, the backbone loop's decode for hybrids)."""
    adapter = adapter_of(model)
    if adapter.hybrid:
        return decode(model, token[:, None], cache)[:, -1]
    info = get_patch(model)
    cls = info.original_class if info is not None else type(model)
    return adapter.decode_step(model, cls, token[:, None], cache).logits[:, -1]


class TokenProgress:
    """A ``generate`` streamer that shows a progress bar of new tokens once generation has run ``delay_s``
    seconds (a long generation is never silent; a short one prints nothing)."""

    def __init__(self, total: int, delay_s: float = 3.0):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc="generating", unit="tok", delay=delay_s, leave=False)
        self.prompt_seen = False

    def put(self, value: Tensor) -> None:
        if not self.prompt_seen:  # the first call hands over the prompt
            self.prompt_seen = True
            return
        self.bar.update(1)

    def end(self) -> None:
        self.bar.close()


@torch.no_grad()
def generate_text(
    model: nn.Module,
    tokenizer: Any,
    prompt: str | Sequence[str],
    max_new_tokens: int = 32,
    greedy: bool = True,
    progress: bool = True,
    **generate_kwargs: Any,
) -> str | list[str]:
    """Continue ``prompt`` (or a list of prompts, left-padded) with ``model.generate``; returns the new text.

    ``progress``: a token progress bar on stderr once generation takes more than a few seconds."""
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(prompts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    device = next(model.parameters()).device
    input_ids, attention_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if progress and len(prompts) == 1:  # HF streamers take one row
        generate_kwargs.setdefault("streamer", TokenProgress(max_new_tokens))
    out = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=not greedy,
        pad_token_id=pad_id, **generate_kwargs,
    )
    texts = tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)
    return texts[0] if single else texts

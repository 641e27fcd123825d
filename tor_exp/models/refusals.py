"""Recurrent families in transformers that tor_exp refuses, each with the one-line reason (docs/families.md).

Torch-free (read while validating a config). A refusal names the property that token reduction needs and the
family lacks: a reduced batch is padded per row, so padding must stay out of every recurrent state, states must
live in a cache a reduced prefill can fill and decoding continue, and the recurrence must not count index distance
(removing tokens would compress time).
"""
from __future__ import annotations

from typing import Optional

from tor_exp.errors import ConfigError

#: family name → (HF model types, why tor_exp cannot reduce tokens in it)
REFUSED: dict[str, tuple[tuple[str, ...], str]] = {
    "recurrent_gemma": (("recurrent_gemma",),
                        "its RG-LRU and conv states are held on the layer modules, not in a cache a reduced prefill "
                        "could fill, and its recurrence takes no padding mask (it resets at position 0 instead), so "
                        "the padding of a reduced batch would enter the state"),
    "xlstm": (("xlstm",), "its mLSTM blocks take no padding mask (HF ignores attention_mask), so the padding of a "
                          "reduced batch would enter the recurrent state"),
    "rwkv": (("rwkv",), "RWKV-4 takes no padding mask and no positions (HF ignores attention_mask), so the padding "
                        "of a reduced batch would enter the WKV state"),
    "minimax": (("minimax",), "its lightning attention decays by index distance exp(-s·(i-j)), not by a learned "
                              "per-token gate, so removing tokens would compress time: the survivors would see "
                              "other decays than in the unreduced model"),
}


def refusal(family: Optional[str] = None, model_type: Optional[str] = None) -> Optional[str]:
    """The one-line refusal of a ``model.family`` value or a config.json ``model_type`` (None: not refused)."""
    for name, (types, why) in REFUSED.items():
        if family == name or (model_type is not None and model_type in types):
            return f"model family {name}: {why}; tor_exp does not reduce tokens in it (docs/families.md)"
    return None


def check_not_refused(family: Optional[str] = None, model_type: Optional[str] = None) -> None:
    """Raise the family's one-line ConfigError when tor_exp refuses it."""
    message = refusal(family, model_type)
    if message is not None:
        raise ConfigError(message)

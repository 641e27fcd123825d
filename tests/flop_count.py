"""torch's FLOP counter over a model's forward, on every transformers release the project supports.

transformers 5.25 calls its mixer functions (``causal_conv1d_fn``, the scans, …) through ``nn.Module`` wrappers of
the ``kernels`` package; ``FlopCounterMode``'s module tracker then registers gradient hooks on their inputs, which
fails for a view of a parameter made under ``no_grad`` ("Expected gradient function to be set"). Counting with the
parameters frozen sees the same operations (inference never needs their gradients) on 5.24 and 5.25 alike.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@contextmanager
def counting_flops(model: nn.Module) -> Iterator[FlopCounterMode]:
    """``with counting_flops(model) as counter: model(...)``; gradients off, parameters' flags restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            yield counter
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)

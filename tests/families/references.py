"""Independent references for the hybrid families, written from HF's own layers and mask utilities (never from
tor_exp's loop): the HF layers before a location on the full sequence, then the HF layers after it on the kept
tokens with their original position ids. Batch 1, no padding.

One module per family, ``ref_<family>.py``, with ``prune_reference(model, ids [1, N], location, keep [K]) -> logits
[1, K, V]`` (``keep``: the kept original positions, sorted). HF's ``create_causal_mask`` reads non-consecutive
``position_ids`` as *packed* sequences when no 2-D mask is given, so references pass an explicit all-ones 2-D mask:
the kept tokens are one sequence with gaps in its positions.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from torch import Tensor

PRUNE_REFERENCES: dict[str, Callable[..., Tensor]] = {
    path.stem.removeprefix("ref_"): importlib.import_module(path.stem).prune_reference
    for path in sorted(Path(__file__).parent.glob("ref_*.py"))
}

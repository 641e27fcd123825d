"""The families under test and the inputs every family test uses (imported by conftest.py and the tests)."""
from __future__ import annotations

import torch

from references import PRUNE_REFERENCES

#: every family beyond the paper's Mamba / Mamba-2 (tests/models): each has conf/model/tiny_<family>.yaml and a
#: hand-written reference tests/families/ref_<family>.py
FAMILIES = sorted(PRUNE_REFERENCES)


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, length), generator=g)


def padded_mask(batch: int, length: int) -> torch.Tensor:
    """Rows with no padding, left padding and right padding (row 0, 1, 2, then repeating)."""
    mask = torch.ones(batch, length, dtype=torch.long)
    for b in range(batch):
        if b % 3 == 1:
            mask[b, : length // 4] = 0
        elif b % 3 == 2:
            mask[b, length - length // 3:] = 0
    return mask

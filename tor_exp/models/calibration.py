"""Post-training calibration of methods with thresholds (LTMP, METHOD.md §3): the text they see and the pass.

:func:`tor_exp.models.schedule.reducing` calls :func:`calibrate` right after patching, so a method that needs
calibration always sees the same text: the model config's ``calibration_text`` (in-domain, never evaluation items),
else the bundled generic one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from tor_exp.errors import ConfigError
from tor_exp.models.patching import reduced_forward
from tor_exp.paths import resolve_pkg_path

GENERIC_CALIBRATION = Path(__file__).resolve().parent.parent / "assets" / "calibration.txt"


def calibration_text(source: Optional[str] = None) -> str:
    """The text at ``source`` (.txt, or .jsonl with a "text" field per line), else the bundled generic text."""
    path = Path(resolve_pkg_path(source, "model.calibration_text")) if source else GENERIC_CALIBRATION
    if not path.is_file():
        raise ConfigError(f"model.calibration_text={source!r}: no such file ({path})")
    if path.suffix == ".jsonl":
        return "\n\n".join(json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip())
    return path.read_text()


def needs_calibration(method: Any) -> bool:
    """A method with post-training thresholds that are not loaded yet (e.g. from reduction.thresholds_file)."""
    return hasattr(method, "calibrating") and not getattr(method, "thresholds", None)


@torch.no_grad()
def calibrate(method: Any, model: nn.Module, tokenizer: Any, text: str, *, seq_len: int = 128,
              batch_size: int = 4, max_sequences: int = 64) -> int:
    """Run half-overlapping ``seq_len`` windows of ``text`` through the patched model in the method's
    calibration mode; returns how many windows it saw (0 when the method needs none)."""
    if not needs_calibration(method):
        return 0
    device = next(model.parameters()).device
    ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
    chunks = [ids[i:i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len // 2)][:max_sequences] or [ids]
    with method.calibrating():
        for i in range(0, len(chunks), batch_size):
            reduced_forward(model, torch.stack(chunks[i:i + batch_size]).to(device), logits="last")
    return len(chunks)

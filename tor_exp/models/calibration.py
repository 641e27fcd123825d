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
from torch import Tensor, nn

from tor_exp.errors import ConfigError
from tor_exp.models.patching import reduced_forward
from tor_exp.paths import resolve_pkg_path

GENERIC_CALIBRATION = Path(__file__).resolve().parent.parent / "assets" / "calibration.txt"


#: scheduled removals every location must see in calibration, pooled over its windows: each threshold is a
#: midpoint between order statistics of the removed and kept tokens' scores, so with fewer it rests on one or two
#: tokens (and with none it removes nothing at all: a 20 % target realised as 0 %)
MIN_SCHEDULED_REMOVALS = 8


def calibration_text(source: Optional[str] = None) -> str:
    """The text at ``source`` (.txt, or .jsonl with a "text" field per line), else the bundled generic text.
    An empty file, a line that is not a JSON object with a string ``"text"``, or an unreadable file is a
    ConfigError naming the file (and the line)."""
    key = "model.calibration_text"
    path = Path(resolve_pkg_path(source, key)) if source else GENERIC_CALIBRATION
    if not path.is_file():
        raise ConfigError(f"{key}={source!r}: no such file ({path})")
    try:
        raw = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{key}={source!r}: cannot read {path}: {err}") from err
    if path.suffix == ".jsonl":
        texts = []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{key}={source!r}: {path} line {number}: not JSON ({err.msg})") from err
            if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                raise ConfigError(f"{key}={source!r}: {path} line {number}: needs a JSON object with a string "
                                  '"text" field (a .jsonl calibration file holds one {"text": ...} per line)')
            texts.append(item["text"])
        raw = "\n\n".join(texts)
    if not raw.strip():
        raise ConfigError(f"{key}={source!r}: {path} holds no text to calibrate on")
    return raw


def _windows(n_tokens: Tensor, seq_len: int, max_sequences: int) -> tuple[Tensor, Tensor]:
    """(how many windows, tokens per window) :func:`calibrate` cuts from texts of ``n_tokens`` tokens (a tensor of
    candidate lengths): half-overlapping ``seq_len`` windows, at most ``max_sequences``; a shorter text is one."""
    full = n_tokens >= seq_len
    count = torch.where(full, torch.div(n_tokens - seq_len, seq_len // 2, rounding_mode="floor") + 1,
                        torch.ones_like(n_tokens)).clamp(max=max_sequences)
    return count, torch.where(full, torch.full_like(n_tokens, seq_len), n_tokens)


def scheduled_removals(n_tokens: Tensor, ratios: list[float], *, seq_len: int = 128,
                       max_sequences: int = 64) -> Tensor:
    """[len(n_tokens), len(ratios)]: tokens a calibration on a text of each length is scheduled to remove at each
    location, pooled over its windows (every calibration token is reducible; r = n − ceil(ρ·n), at most ⌊n/2⌋,
    as LTMP counts them)."""
    from tor_exp.reduction.base import num_to_remove

    count, n = _windows(n_tokens.to(torch.long), seq_len, max_sequences)
    removed = []
    for rho in ratios:  # one step per location (not per token): each location sees what the previous one kept
        r = num_to_remove(n, rho)
        removed.append(count * r)
        n = n - r
    return torch.stack(removed, dim=-1) if removed else torch.zeros(len(n_tokens), 0, dtype=torch.long)


def check_calibration_length(n_tokens: int, schedule: Any, source: Optional[str], *, seq_len: int = 128,
                             max_sequences: int = 64) -> None:
    """Refuse a calibration text too short for its thresholds: every location must be scheduled to remove at least
    :data:`MIN_SCHEDULED_REMOVALS` tokens over the calibration windows. The message says how many tokens the text
    has and how many it needs (the shortest text that meets the rule, found over every length at once)."""
    ratios = [schedule.ratio(i) for i in range(len(schedule.locations))] if schedule is not None else []
    if all(rho >= 1.0 for rho in ratios):  # nothing scheduled (ρ = 1): thresholds that remove nothing are right
        return
    have = scheduled_removals(torch.tensor([n_tokens]), ratios, seq_len=seq_len, max_sequences=max_sequences)[0]
    if int(have.min()) >= MIN_SCHEDULED_REMOVALS:
        return
    longest = seq_len + (max_sequences - 1) * (seq_len // 2)  # more tokens than this add no window
    lengths = torch.arange(1, longest + 1)
    enough = scheduled_removals(lengths, ratios, seq_len=seq_len, max_sequences=max_sequences).min(dim=1).values \
        >= MIN_SCHEDULED_REMOVALS
    name = f"model.calibration_text={source!r}" if source else "the bundled calibration text"
    worst = int(have.argmin())
    detail = (f"location {schedule.locations[worst]} would be calibrated on {int(have[worst])} removed token(s), "
              f"fewer than {MIN_SCHEDULED_REMOVALS}, so its thresholds would not reach the target")
    if bool(enough.any()):
        need = int(lengths[enough][0])
        raise ConfigError(f"{name}: too short to calibrate: {n_tokens} token(s), needs at least {need} at keep "
                          f"ratio {schedule.keep_ratio:.4f} ({detail})")
    raise ConfigError(f"{name}: cannot calibrate at keep ratio {schedule.keep_ratio:.4f}: even {longest} tokens "
                      f"({max_sequences} windows of {seq_len}) schedule fewer than {MIN_SCHEDULED_REMOVALS} removals "
                      f"at some location ({detail}); use a lower keep ratio / higher target")


def needs_calibration(method: Any) -> bool:
    """A method with post-training thresholds that are not loaded yet (e.g. from reduction.thresholds_file)."""
    return hasattr(method, "calibrating") and not getattr(method, "thresholds", None)


@torch.no_grad()
def calibrate(method: Any, model: nn.Module, tokenizer: Any, text: str, *, seq_len: int = 128,
              batch_size: int = 4, max_sequences: int = 64, schedule: Any = None,
              source: Optional[str] = None) -> int:
    """Run half-overlapping ``seq_len`` windows of ``text`` through the patched model in the method's
    calibration mode; returns how many windows it saw (0 when the method needs none). With the ``schedule``, a
    text too short to calibrate every location is refused first (:func:`check_calibration_length`; ``source``
    names it)."""
    if not needs_calibration(method):
        return 0
    device = next(model.parameters()).device
    ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
    if schedule is not None:
        check_calibration_length(int(ids.numel()), schedule, source, seq_len=seq_len, max_sequences=max_sequences)
    elif ids.numel() == 0:
        raise ConfigError(f"model.calibration_text={source!r}: no tokens to calibrate on")
    chunks = [ids[i:i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len // 2)][:max_sequences] or [ids]
    with method.calibrating():
        for i in range(0, len(chunks), batch_size):
            reduced_forward(model, torch.stack(chunks[i:i + batch_size]).to(device), logits="last")
    return len(chunks)

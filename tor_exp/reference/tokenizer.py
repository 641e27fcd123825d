"""Byte-level tokenizer of the reference model: ids 0..255 = raw bytes, 256 = eos, 257 = pad.

Reuses :func:`tor_exp.models.tokenizer.byte_tokenizer` (same id layout) so tiny test models and the shipped
reference model share one tokenizer; it is saved next to the weights, so loading never rebuilds it.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from tor_exp.models.tokenizer import BYTE_VOCAB_SIZE, byte_tokenizer

EOS_ID = 256
PAD_ID = 257
VOCAB_SIZE = BYTE_VOCAB_SIZE


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """The shared byte tokenizer; ``ids == list(text.encode("utf-8"))``."""
    tok = byte_tokenizer()
    assert tok.eos_token_id == EOS_ID and tok.pad_token_id == PAD_ID and len(tok) == VOCAB_SIZE
    return tok

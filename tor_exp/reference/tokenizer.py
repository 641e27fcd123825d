"""Byte-level tokenizer for the reference model (ids 0..255 = raw bytes, 256 = eos, 257 = pad).

Why its own module: ``tor_exp/models/tokenizer.py`` did not exist when the reference model was trained; this
builder is tiny, deterministic and needs no download. It is a ``PreTrainedTokenizerFast`` (a merge-free BPE over
the GPT-2 byte alphabet) so the HF/lm-eval stack treats it like any tokenizer, and it is saved next to the
weights, so loading never calls this code.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

EOS_ID = 256
PAD_ID = 257
VOCAB_SIZE = 258


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-unicode map (the alphabet of the ByteLevel pre-tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer whose id for every byte equals the byte value, so ``ids == list(text.encode())``."""
    b2u = _bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    vocab["<eos>"] = EOS_ID
    vocab["<pad>"] = PAD_ID
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    fast.model_max_length = 1 << 20
    return fast

"""A byte-level tokenizer built locally (no download): ids 0..255 are bytes, then ``<|eos|>`` and ``<|pad|>``.

Tiny test models and the shipped reference model use it so nothing ever touches the network.
"""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|eos|>"
PAD_TOKEN = "<|pad|>"
BYTE_VOCAB_SIZE = 258  # 256 bytes + eos + pad


def _gpt2_bytes_to_unicode() -> list[str]:
    """The GPT-2 byte→printable-unicode table, so every byte is one pre-tokenized character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    chars = {}
    extra = 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def byte_tokenizer(padding_side: str = "right") -> PreTrainedTokenizerFast:
    """A fast HF tokenizer: one token per UTF-8 byte (id = byte value), eos = 256, pad = 257."""
    vocab = {ch: i for i, ch in enumerate(_gpt2_bytes_to_unicode())}
    vocab[EOS_TOKEN] = 256
    vocab[PAD_TOKEN] = 257
    # BPE without merges over the byte alphabet = exactly one token per byte.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, padding_side=padding_side
    )
    return fast

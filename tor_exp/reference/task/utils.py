"""Per-byte metrics for the reference held-out task.

lm-eval's ``perplexity`` (as in lambada) is exp(−mean item log-likelihood): fine for one-word continuations, but
these continuations are 16–32 bytes, so it would be a per-*item* perplexity around 1e10. The byte-level numbers
(weighted by each continuation's byte count, as lm-eval does for its rolling tasks) are the readable ones.
"""
from __future__ import annotations


def process_results(doc: dict, results: list) -> dict:
    loglikelihood, is_greedy = results[0]
    n_bytes = len(doc["continuation"].encode("utf-8"))
    return {
        "byte_perplexity": (loglikelihood, n_bytes),
        "bits_per_byte": (loglikelihood, n_bytes),
        "acc": int(is_greedy),
    }

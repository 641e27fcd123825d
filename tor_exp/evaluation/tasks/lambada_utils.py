"""Per-byte metrics for ``lambada_fixture`` next to lm-eval's own ``perplexity`` and ``acc``.

lm-eval's LAMBADA ``perplexity`` is exp(−mean item log-likelihood): one number per *word*, which for a byte-level
model (a whole word is 4–10 tokens) is 1e6–1e15 and not comparable across tokenizers. ``byte_perplexity`` and
``bits_per_byte`` divide the summed log-likelihood by the summed bytes of the targets (" " + last word), the way
lm-eval weights its rolling tasks, so they read the same for any tokenizer.
"""
from __future__ import annotations


def process_results(doc: dict, results: list) -> dict:
    loglikelihood, is_greedy = results[0]
    n_bytes = len((" " + doc["text"].split(" ")[-1]).encode("utf-8"))
    return {
        "perplexity": loglikelihood,
        "acc": int(is_greedy),
        "byte_perplexity": (loglikelihood, n_bytes),
        "bits_per_byte": (loglikelihood, n_bytes),
    }

"""Paired bootstrap intervals of the difference between two runs on the same documents.

Two methods scored on the same items differ far less than two independent samples would: resampling the
*documents* (the same resampled set for both runs) and recomputing each run's aggregate gives the distribution of
the difference. Aggregates are lm-eval's own (``mean``, ``perplexity``, ``weighted_perplexity``,
``bits_per_byte``, ...), applied to lm-eval's per-document metric values from its logged samples.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence

LEVEL = 0.95


@dataclass
class Difference:
    """``delta`` = aggregate(b) − aggregate(a) over ``n`` shared documents, with its paired bootstrap interval."""

    delta: float
    low: float
    high: float
    n: int
    iters: int

    @property
    def excludes_zero(self) -> bool:
        """The interval lies on one side of 0: a difference this sample resolves."""
        return self.low > 0.0 or self.high < 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "level": LEVEL}


def aggregation(name: str) -> Callable[[Sequence[Any]], float]:
    from lm_eval.api.registry import get_aggregation

    return get_aggregation(name)


def per_document(samples: Sequence[dict[str, Any]], metric: str) -> dict[int, Any]:
    """doc_id → the document's value of ``metric`` in lm-eval's logged samples."""
    return {int(s["doc_id"]): s[metric] for s in samples if metric in s}


def paired_difference(a: dict[int, Any], b: dict[int, Any], aggregate: Callable[[Sequence[Any]], float], *,
                      iters: int = 1000, seed: int = 0) -> Optional[Difference]:
    """Δ = aggregate(b) − aggregate(a) on the documents both have, and the percentile interval of Δ over
    ``iters`` resamples of those documents (with replacement, the same draw for both)."""
    docs = sorted(set(a) & set(b))
    if not docs:
        return None
    va, vb = [a[d] for d in docs], [b[d] for d in docs]
    delta = float(aggregate(vb)) - float(aggregate(va))
    rng = random.Random(seed)
    n = len(docs)
    draws = []
    for _ in range(iters):
        idx = [rng.randrange(n) for _ in range(n)]
        draws.append(float(aggregate([vb[i] for i in idx])) - float(aggregate([va[i] for i in idx])))
    draws.sort()
    tail = (1.0 - LEVEL) / 2.0
    low = draws[max(0, int(tail * iters))]
    high = draws[min(iters - 1, int((1.0 - tail) * iters))]
    return Difference(delta, low, high, n, iters)


def task_differences(base: dict[str, Any], other: dict[str, Any], *, iters: int = 1000,
                     seed: int = 0) -> dict[str, dict[str, dict[str, Any]]]:
    """Every (task, metric) both evaluation outputs logged samples for → its paired difference (other − base).

    ``base``/``other``: :func:`tor_exp.evaluation.runner.evaluate` outputs with ``samples`` and ``aggregations``.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for task, aggregations in (other.get("aggregations") or {}).items():
        sa, sb = (base.get("samples") or {}).get(task), (other.get("samples") or {}).get(task)
        if not sa or not sb:
            continue
        for metric, name in aggregations.items():
            diff = paired_difference(per_document(sa, metric), per_document(sb, metric), aggregation(name),
                                     iters=iters, seed=seed)
            if diff is not None:
                out.setdefault(task, {})[metric] = diff.to_dict()
    return out

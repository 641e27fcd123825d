"""Paired bootstrap intervals of the difference between two runs on the same documents.

Two methods scored on the same items differ far less than two independent samples would: resampling the
*documents* (the same resampled set for both runs) and recomputing each run's aggregate gives the distribution of
the difference. Aggregates are lm-eval's own (``mean``, ``perplexity``, ``weighted_perplexity``,
``bits_per_byte``, ...), applied to lm-eval's per-document metric values from its logged samples.

The interval is a function of the two runs' per-document values alone: its resamples are drawn with a seed fixed by
the task and metric names (:func:`interval_seed`), never by the run's ``seed`` (which seeds the model's run), so
the same outputs give the same interval in every job. A job draws ``eval.bootstrap_iters`` resamples, the count
lm-eval uses for its own bootstrap standard errors.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

LEVEL = 0.95
#: index draws held in memory at once (resamples × documents)
_CHUNK_CELLS = 1 << 22


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


def interval_seed(task: str, metric: str) -> int:
    """The resampling seed of one (task, metric): derived from the names only, so it is the same in every job."""
    return int.from_bytes(hashlib.sha256(f"{task}/{metric}".encode()).digest()[:8], "big")


def per_document(samples: Sequence[dict[str, Any]], metric: str) -> dict[int, Any]:
    """doc_id → the document's value of ``metric`` in lm-eval's logged samples."""
    return {int(s["doc_id"]): s[metric] for s in samples if metric in s}


def _vectorised(aggregate: Callable[[Sequence[Any]], float]) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    """For lm-eval's common aggregations, the same statistic over every row of a ``[resamples, docs(, 2)]`` array
    (tests/report check each against lm-eval's function); None for any other aggregation."""
    from lm_eval.api import metrics as m

    def weighted_mean(x: np.ndarray) -> np.ndarray:
        return x[..., 0].sum(axis=1) / x[..., 1].sum(axis=1)

    table: dict[Any, Callable[[np.ndarray], np.ndarray]] = {
        m.mean: lambda x: x.mean(axis=1),
        m.perplexity: lambda x: np.exp(-x.mean(axis=1)),
        m.weighted_perplexity: lambda x: np.exp(-weighted_mean(x)),
        m.bits_per_byte: lambda x: -weighted_mean(x) / math.log(2),
    }
    return table.get(aggregate)


def _resampled(values: Sequence[Any], idx: np.ndarray, aggregate: Callable[[Sequence[Any]], float],
               fast: Optional[Callable[[np.ndarray], np.ndarray]]) -> np.ndarray:
    if fast is not None:
        return fast(np.asarray(values, dtype=np.float64)[idx])
    return np.array([float(aggregate([values[i] for i in row])) for row in idx.tolist()])


def paired_difference(a: dict[int, Any], b: dict[int, Any], aggregate: Callable[[Sequence[Any]], float], *,
                      iters: int = 1000, seed: int = 0) -> Optional[Difference]:
    """Δ = aggregate(b) − aggregate(a) on the documents both have, and the percentile interval of Δ over
    ``iters`` resamples of those documents (with replacement, the same draw for both)."""
    docs = sorted(set(a) & set(b))
    if not docs:
        return None
    va, vb = [a[d] for d in docs], [b[d] for d in docs]
    delta = float(aggregate(vb)) - float(aggregate(va))
    n = len(docs)
    rng = np.random.default_rng(seed)
    fast = _vectorised(aggregate)
    chunk = max(1, _CHUNK_CELLS // n)
    parts = []
    for start in range(0, iters, chunk):
        idx = rng.integers(0, n, size=(min(chunk, iters - start), n))
        parts.append(_resampled(vb, idx, aggregate, fast) - _resampled(va, idx, aggregate, fast))
    draws = np.sort(np.concatenate(parts)) if parts else np.zeros(0)
    if not len(draws):
        return Difference(delta, delta, delta, n, 0)
    tail = (1.0 - LEVEL) / 2.0
    low = float(draws[max(0, int(tail * iters))])
    high = float(draws[min(iters - 1, int((1.0 - tail) * iters))])
    return Difference(delta, low, high, n, iters)


def task_differences(base: dict[str, Any], other: dict[str, Any], *,
                     iters: int = 1000) -> dict[str, dict[str, dict[str, Any]]]:
    """Every (task, metric) both evaluation outputs logged samples for → its paired difference (other − base),
    resampled with :func:`interval_seed`.

    ``base``/``other``: :func:`tor_exp.evaluation.runner.evaluate` outputs with ``samples`` and ``aggregations``.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for task, aggregations in (other.get("aggregations") or {}).items():
        sa, sb = (base.get("samples") or {}).get(task), (other.get("samples") or {}).get(task)
        if not sa or not sb:
            continue
        for metric, name in aggregations.items():
            diff = paired_difference(per_document(sa, metric), per_document(sb, metric), aggregation(name),
                                     iters=iters, seed=interval_seed(task, metric))
            if diff is not None:
                out.setdefault(task, {})[metric] = diff.to_dict()
    return out

"""The per-task FLOPs/token ledger of an evaluation: what each lm-eval task's requests cost, reduced and unreduced.

The backend (:class:`~tor_exp.evaluation.lm.TorExpLM`) counts every scored batch and every generated request into a
:class:`Ledger`, naming the task of each row itself (:func:`request_tasks`): the ledger holds no notion of "the
current task". A task's realised FLOPs reduction is computed from these counts (the real per-layer token counts
of the reduced forward against the unreduced input lengths); in a data-parallel run each rank keeps its shard and
:meth:`Ledger.gathered` sums the shards on rank 0.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from tor_exp.evaluation.scoring import Scores
from tor_exp.models.flops import backbone_flops_rows
from tor_exp.models.shape import ModelShape

#: the task of a request that names none (lm-eval always names it; a hand-made request may not)
UNKNOWN_TASK = "<unknown>"


@dataclass
class TaskStats:
    """Per-task request accounting. ``realised_reduction`` = 1 − Σ backbone FLOPs at the real per-layer token counts
    / Σ backbone FLOPs unreduced (the model's FLOP shape: equal to the token ratio ``realised_tokens`` when every
    layer costs the same per token, FLOP-weighted in a hybrid)."""

    requests: int = 0
    loglikelihood_requests: int = 0
    rolling_requests: int = 0
    generate_requests: int = 0
    input_tokens: int = 0
    layer_tokens_full: float = 0.0
    layer_tokens_real: float = 0.0
    flops_full: float = 0.0
    flops_real: float = 0.0
    offset_short: int = 0
    offset_empty: int = 0
    offset_misaligned: int = 0

    @property
    def realised_tokens(self) -> float:
        if self.layer_tokens_full <= 0:
            return 0.0
        return 1.0 - self.layer_tokens_real / self.layer_tokens_full

    @property
    def realised_reduction(self) -> float:
        if self.flops_full <= 0:
            return self.realised_tokens
        return 1.0 - self.flops_real / self.flops_full

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "realised_reduction": self.realised_reduction, "realised_tokens": self.realised_tokens}

    @classmethod
    def total(cls, parts: list["TaskStats"]) -> "TaskStats":
        """The ledger of several ranks' shards of one task: every count summed (exact: the counts and the FLOPs
        are whole numbers far below 2**53)."""
        out = cls()
        for part in parts:
            for key, value in asdict(part).items():
                setattr(out, key, getattr(out, key) + value)
        return out


def request_tasks(requests: Sequence[Any], world_size: int) -> list[Optional[str]]:
    """Each request's task (its ``task_name``), None for the copies lm-eval's evaluator appends in a data-parallel
    run (``world_size`` > 1) so that every rank gets as many requests as the busiest one (the same ``Instance``
    object again beyond its ``repeats``): they are scored (the evaluator expects answers) but kept out of the
    ledger, which therefore sums to the single-process one over the ranks."""
    seen: dict[int, int] = {}
    out: list[Optional[str]] = []
    for req in requests:
        n = seen[id(req)] = seen.get(id(req), 0) + 1
        padding = world_size > 1 and n > max(1, int(getattr(req, "repeats", 1) or 1))
        out.append(None if padding else (getattr(req, "task_name", None) or UNKNOWN_TASK))
    return out


class Ledger:
    """One process's per-task counts (one rank's shard in a data-parallel run) for a model of FLOP shape
    ``shape`` with ``layers`` blocks. Rows whose task is None (lm-eval's padding copies) are not counted."""

    def __init__(self, shape: ModelShape, layers: int) -> None:
        self.shape = shape
        self.layers = int(layers)
        self.tasks: dict[str, TaskStats] = {}

    def _stat(self, task: str) -> TaskStats:
        return self.tasks.setdefault(task, TaskStats())

    def clear(self) -> None:
        self.tasks = {}

    def count_scored(self, tasks: Sequence[Optional[str]], input_lengths: Sequence[int] | torch.Tensor,
                     tokens_per_layer: torch.Tensor, *, rolling: bool, offset: Optional[Scores] = None) -> None:
        """One scored batch: row b of task ``tasks[b]`` had ``input_lengths[b]`` real input tokens and its layer l
        processed ``tokens_per_layer[b, l]`` of them ([B, L]); ``rolling`` marks loglikelihood_rolling windows.
        ``offset``: the batch's scores under the offset alignment, whose short/empty/misaligned flags are counted
        (None under the exact alignment and for rolling windows)."""
        counts = torch.as_tensor(tokens_per_layer).detach().to("cpu", torch.float64)
        rows = len(tasks)
        if tuple(counts.shape) != (rows, self.layers) or len(input_lengths) != rows:
            raise ValueError(f"tokens_per_layer of shape {tuple(counts.shape)} and {len(input_lengths)} input "
                             f"lengths: expected [{rows}, {self.layers}] and {rows}")
        real = counts.sum(1)
        lengths = torch.as_tensor([float(n) for n in input_lengths], dtype=torch.float64)
        flops_real = backbone_flops_rows(self.shape, counts)
        flops_full = backbone_flops_rows(self.shape, lengths[:, None].expand(-1, self.layers))
        for i, task in enumerate(tasks):
            if task is None:  # lm-eval's padding copy (data parallel): answered, not counted
                continue
            st = self._stat(task)
            st.requests += 1
            if rolling:
                st.rolling_requests += 1
            else:
                st.loglikelihood_requests += 1
            n_input = int(input_lengths[i])
            st.input_tokens += n_input
            st.layer_tokens_full += float(self.layers * n_input)
            st.layer_tokens_real += float(real[i])
            st.flops_full += float(flops_full[i])
            st.flops_real += float(flops_real[i])
            if offset is not None:
                short = bool(offset.short[i])
                st.offset_short += int(short)
                st.offset_empty += int(short and bool(offset.empty[i]))
                st.offset_misaligned += int(offset.misaligned[i])

    def count_generated(self, tasks: Sequence[Optional[str]]) -> None:
        """Generated requests: counted, their FLOPs not measured (a generation's token counts are not recorded)."""
        for task in tasks:
            if task is not None:  # not lm-eval's padding copy
                st = self._stat(task)
                st.requests += 1
                st.generate_requests += 1

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Every task's counts and realised reductions, by task name."""
        return {task: s.to_dict() for task, s in sorted(self.tasks.items())}

    def gathered(self, gather: Callable[[Any], Optional[list[Any]]]) -> dict[str, dict[str, Any]]:
        """:meth:`as_dict` over every rank's shard, summed on the rank ``gather`` collects to ({} elsewhere).
        ``gather(obj)`` returns every rank's ``obj`` there and None on the others (``[obj]`` for one process)."""
        parts = gather(self.tasks)
        if parts is None:
            return {}
        names = sorted({task for part in parts for task in part})
        return {task: TaskStats.total([part[task] for part in parts if task in part]).to_dict() for task in names}

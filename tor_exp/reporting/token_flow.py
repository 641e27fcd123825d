"""Where every token goes: per reduction location, which tokens were pruned and which merged into which.

Every paper-mode method decides with a :class:`~tor_exp.reduction.merge.ReductionPlan` (which tokens survive and,
per stream, which removed token is merged into which survivor) before the shared ``apply_plan`` carries it
out. :class:`FlowRecorder` is an observer of a patched model (``observing(model, recorder)``): after each
reduction it reads the plan for batch row 0 and, composed over locations, builds ToMe-style source maps.
Parity methods (``*_official``) run the released code and make no plan, so their flow cannot be shown.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from tor_exp.reduction.base import ReductionObserver
from tor_exp.reduction.merge import STREAMS, ReductionPlan
from tor_exp.reduction.state import TokenState


class NoPlanError(RuntimeError):
    """The method applied its own code (parity modes): there is no plan to show."""


def no_plan_message(name: str) -> str:
    return (f"token flow cannot show '{name}': parity methods run the released code directly and make no "
            "ReductionPlan (paper-mode methods utrc, evit, pumer, ltmp can be shown)")


@dataclass
class LocationFlow:
    """What one reduction location did to row 0 of the batch (positions are original token indices)."""

    layer: int
    positions_in: list[int]
    positions_out: list[int]
    #: per stream: surviving position → input positions it now contains (itself included)
    members: dict[str, dict[int, list[int]]]
    #: per stream: removed position → surviving position it was merged into, or None if pruned
    removed: dict[str, dict[int, Optional[int]]]
    #: residual stream, cumulative: surviving position → every original position it stands for
    groups: dict[int, list[int]] = field(default_factory=dict)


class FlowRecorder(ReductionObserver):
    """An observer of the backbone loop: records a :class:`LocationFlow` per reduction."""

    def __init__(self, name: str = "this method"):
        self.name = name
        self.flows: list[LocationFlow] = []
        self._groups: Optional[dict[int, list[int]]] = None

    def after_reduce(self, location: int, before: TokenState, plan: Optional[ReductionPlan],
                     after: TokenState) -> None:
        if plan is None and after is not before:
            raise NoPlanError(no_plan_message(self.name))
        pos_in = before.positions[0][before.valid[0]].tolist()
        pos_out = after.positions[0][after.valid[0]].tolist()
        members: dict[str, dict[int, list[int]]] = {}
        removed: dict[str, dict[int, Optional[int]]] = {}
        gone = set(pos_in) - set(pos_out)
        for stream in STREAMS:
            into: dict[int, int] = {}
            if plan is not None:
                # row 0's merges on this stream, as original positions: source → destination
                dest = plan.destinations(stream)[0]
                merged = torch.nonzero(dest >= 0).flatten()
                into = dict(zip(before.positions[0, merged].tolist(), before.positions[0, dest[merged]].tolist()))
            members[stream] = {p: [p] for p in pos_out}
            for src, dst in sorted(into.items()):
                members[stream][dst].append(src)
            members[stream] = {p: sorted(m) for p, m in members[stream].items()}
            removed[stream] = {p: into.get(p) for p in pos_in if p in gone}
        if self._groups is None:
            self._groups = {p: [p] for p in pos_in}
        groups = {dst: sorted(o for src in srcs for o in self._groups.get(src, [src]))
                  for dst, srcs in members["residual"].items()}
        self._groups = groups
        self.flows.append(LocationFlow(location, pos_in, pos_out, members, removed, groups))


def trace_token_flow(model: Any, input_ids: Tensor, method: Any, schedule: Any) -> tuple[list[LocationFlow], Any]:
    """Run ``reduced_forward`` with ``method``/``schedule`` and return (flows per location, the output).

    An unpatched model is patched for the call and unpatched after. Raises :class:`NoPlanError` for methods
    that make no plans (parity modes) before running anything.
    """
    from tor_exp.models import reduced_forward
    from tor_exp.models.patching import get_patch, observing, patch, unpatch

    name = getattr(method, "name", "") or type(method).__name__
    if not getattr(method, "makes_plans", False):
        raise NoPlanError(no_plan_message(name))
    recorder = FlowRecorder(name)
    temporary = get_patch(model) is None
    if temporary:
        patch(model, method, schedule)
    try:
        with observing(model, recorder), torch.no_grad():
            out = reduced_forward(model, input_ids, method=method, schedule=schedule)
    finally:
        if temporary:
            unpatch(model)
    if len(recorder.flows) != len(set(schedule.locations)):
        raise RuntimeError(f"{len(recorder.flows)} of {len(set(schedule.locations))} reductions were observed "
                           "(this model backend does not report its reductions)")
    return recorder.flows, out


def describe(flows: list[LocationFlow], tokens: list[str], stream: str = "hidden", max_items: int = 12) -> list[str]:
    """One line per location: 'layer 4: 'a'→'b' merged, 'c' pruned, ...' (token text shown with repr)."""
    lines = []
    for f in flows:
        parts = []
        for src, dst in sorted(f.removed[stream].items()):
            parts.append(f"{tokens[src]!r}@{src} pruned" if dst is None else f"{tokens[src]!r}@{src}→{tokens[dst]!r}@{dst}")
        more = f" (+{len(parts) - max_items} more)" if len(parts) > max_items else ""
        lines.append(f"layer {f.layer}: {len(f.positions_in)}→{len(f.positions_out)} tokens; "
                     + ", ".join(parts[:max_items]) + more)
    return lines


def flow_matrix(flows: list[LocationFlow], n_tokens: int) -> Tensor:
    """[locations, n_tokens] long: after each location, the surviving position that holds each original token
    on the residual stream (-1 where it was pruned). Row colours = ToMe's source visualisation."""
    out = torch.full((len(flows), n_tokens), -1, dtype=torch.long)
    for i, f in enumerate(flows):
        for dst, originals in f.groups.items():
            out[i, originals] = dst
    return out


def plot_flow(flows: list[LocationFlow], tokens: list[str], title: str = "", ax: Any = None) -> Any:
    """Colour each original token (x) by the token holding it after each location (y); pruned = white."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    mat = flow_matrix(flows, len(tokens)).numpy().astype(float)
    shown = np.ma.masked_less(mat, 0)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(6, 0.18 * len(tokens)), 0.45 * len(flows) + 1.2))
    ax.imshow(shown, aspect="auto", cmap="tab20", interpolation="nearest", vmin=0, vmax=max(1, len(tokens) - 1))
    ax.set_yticks(range(len(flows)), [f"after layer {f.layer}" for f in flows])
    ax.set_xticks(range(len(tokens)), [repr(t)[1:-1] or "␣" for t in tokens], fontsize=6)
    ax.set_title(title)
    return ax

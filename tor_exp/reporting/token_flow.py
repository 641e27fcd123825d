"""Where every token goes: per reduction location, which tokens were pruned and which merged into which.

Reduction methods return only the compacted :class:`~tor_exp.reduction.state.TokenState` (positions, sizes), not
a merge map. We recover it exactly by running the method a second time on a *probe* state: same features,
positions, sizes and masks (so every decision is the same) but the two streams replaced by one-hot rows
(token j = e_j). Pruning drops a one-hot, merging averages one-hots, so after the call the non-zero entries
of output row i are the input tokens that ended up in token i — per stream (hybrid prunes some sources on the
hidden stream and merges them on the residual stream). Composed over locations this gives ToMe-style source
maps. The probe's output positions are checked against the real call's, so a method that reads the streams
for its decisions is detected instead of mis-drawn.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
from torch import Tensor

STREAMS = ("hidden", "residual")


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


def _membership(stream: Tensor, n_out: int, n_in: int, tol: float = 1e-6) -> list[list[int]]:
    """Input indices with a non-zero weight in each output row of a probed stream [N_out, N_in]."""
    nz = stream[:n_out, :n_in].abs() > tol
    return [torch.nonzero(row).flatten().tolist() for row in nz]


class FlowRecorder:
    """Wraps ``method.reduce`` on the instance: records a :class:`LocationFlow` per call (batch row 0)."""

    def __init__(self, method: Any):
        self.method = method
        self.flows: list[LocationFlow] = []
        self._groups: Optional[dict[int, list[int]]] = None
        self._reduce = method.reduce  # bound method of the class

    def reduce(self, state: Any, features: dict[str, Tensor], keep_ratio: float, location: int) -> Any:
        out = self._reduce(state, features, keep_ratio, location)
        batch, n_in = state.positions.shape
        eye = torch.eye(n_in, dtype=torch.float32, device=state.positions.device).expand(batch, n_in, n_in)
        probe = state.replace(hidden=eye.clone(), residual=eye.clone())
        probed = self._reduce(probe, features, keep_ratio, location)
        if not torch.equal(probed.positions, out.positions):
            raise RuntimeError(f"{type(self.method).__name__}: decisions depend on the stream values; "
                               "its merge map cannot be recovered by probing")
        valid_in = state.valid[0]
        pos_in = state.positions[0][valid_in].tolist()
        valid_out = out.valid[0]
        pos_out = out.positions[0][valid_out].tolist()
        n_out = len(pos_out)
        members, removed = {}, {}
        for stream in STREAMS:
            rows = _membership(getattr(probed, stream)[0], n_out, n_in)
            members[stream] = {pos_out[i]: sorted(state.positions[0, j].item() for j in rows[i]) for i in range(n_out)}
            into = {src: dst for dst, srcs in members[stream].items() for src in srcs if src != dst}
            removed[stream] = {p: into.get(p) for p in pos_in if p not in set(pos_out)}
        if self._groups is None:
            self._groups = {p: [p] for p in pos_in}
        groups = {dst: sorted(o for src in srcs for o in self._groups.get(src, [src]))
                  for dst, srcs in members["residual"].items()}
        self._groups = groups
        self.flows.append(LocationFlow(location, pos_in, pos_out, members, removed, groups))
        return out


@contextmanager
def recording(method: Any) -> Iterator[FlowRecorder]:
    """``with recording(method) as rec: reduced_forward(...)`` → ``rec.flows``."""
    rec = FlowRecorder(method)
    method.reduce = rec.reduce
    try:
        yield rec
    finally:
        del method.reduce  # back to the class's method


def trace_token_flow(model: Any, input_ids: Tensor, method: Any, schedule: Any) -> tuple[list[LocationFlow], Any]:
    """Run ``reduced_forward`` with ``method``/``schedule`` and return (flows per location, the output)."""
    from tor_exp.models import reduced_forward

    with recording(method) as rec, torch.no_grad():
        out = reduced_forward(model, input_ids, method=method, schedule=schedule)
    return rec.flows, out


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

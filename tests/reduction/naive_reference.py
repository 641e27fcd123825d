"""Naive, loop-based reference implementations written independently of the library (float64, Python lists).

Each works on ONE row given as plain lists of its real tokens (no padding) and returns the survivors as a
list of dicts {pos, hidden, residual, size}. They follow METHOD.md literally, one token at a time, so a
vectorisation bug in the library shows up as a mismatch.
"""
from __future__ import annotations

import math

import torch

EPS = 1e-6


def vec(t) -> list[float]:
    return [float(v) for v in t]


def importance(y: list[float], metric: str) -> float:
    if metric == "clip":
        return sum(max(0.0, v) for v in y) / len(y)
    if metric == "unclipped":
        return sum(y) / len(y)
    if metric == "l1":
        return sum(abs(v) for v in y) / len(y)
    if metric == "l2":
        return math.sqrt(sum(v * v for v in y))
    raise ValueError(metric)


def cos(a: list[float], b: list[float]) -> float:
    na = max(math.sqrt(sum(v * v for v in a)), EPS)
    nb = max(math.sqrt(sum(v * v for v in b)), EPS)
    return sum(x * y for x, y in zip(a, b)) / (na * nb)


def n_remove(n: int, keep_ratio: float, cap: bool = True) -> int:
    keep = math.ceil(n * keep_ratio - 1e-9)
    r = max(n - keep, 0)
    return min(r, n // 2) if cap else r


def mean_of(vectors: list[list[float]], weights: list[float]) -> list[float]:
    total = sum(weights)
    return [sum(w * v[d] for v, w in zip(vectors, weights)) / total for d in range(len(vectors[0]))]


def _tokens(hidden, residual, sizes):
    return [
        {"pos": i, "hidden": vec(hidden[i]), "residual": vec(residual[i]), "size": float(sizes[i])}
        for i in range(len(hidden))
    ]


def _best(a: int, candidates: list[int], feats) -> tuple[float, int]:
    """Most similar candidate (first in the given order on ties)."""
    best_g, best_j = -math.inf, None
    for j in candidates:
        c = cos(feats[a], feats[j])
        if c > best_g:
            best_g, best_j = c, j
    return best_g, best_j


def ref_utrc(hidden, residual, imp_feat, sim_feat, sizes, reducible, keep_ratio, cfg: dict) -> list[dict]:
    """Paper-mode UTRC on one row (METHOD.md §2)."""
    toks = _tokens(hidden, residual, sizes)
    imp = [importance(vec(y), cfg.get("metric", "clip")) for y in imp_feat]
    feats = [vec(f) for f in sim_feat]
    red = [i for i in range(len(toks)) if reducible[i]]
    n = len(red)
    r = n_remove(n, keep_ratio)
    if r == 0:
        return toks
    by_imp = sorted(red, key=lambda i: (imp[i], i))
    set_a = sorted(by_imp[: n // 2])
    set_b = sorted(by_imp[n // 2 :])
    edges = {a: _best(a, set_b, feats) for a in set_a}
    retained = sorted(set_a, key=lambda a: (-edges[a][0], a))[:r]

    def pruned(mode: str, q: float) -> set[int]:
        if mode == "prune":
            return set(retained)
        if mode == "merge":
            return set()
        k = math.floor(q * len(retained) + 1e-9)
        if cfg.get("hybrid_prune_by", "importance") == "importance":
            order = sorted(retained, key=lambda a: (imp[a], a))
        else:
            order = sorted(retained, key=lambda a: (-edges[a][0], a))
        return set(order[:k])

    p_hidden = pruned(cfg.get("hidden", "hybrid"), cfg.get("q", 0.5))
    p_res = pruned(cfg.get("residual", "merge"), cfg.get("residual_q", 0.5))
    sw = cfg.get("size_weighted", False)
    out = []
    for t in toks:
        i = t["pos"]
        if i in retained:
            continue
        t = dict(t)
        for stream, prune_set in (("hidden", p_hidden), ("residual", p_res)):
            srcs = [a for a in retained if edges[a][1] == i and a not in prune_set]
            if srcs:
                vs = [toks[i][stream]] + [toks[a][stream] for a in srcs]
                ws = [toks[i]["size"] if sw else 1.0] + [toks[a]["size"] if sw else 1.0 for a in srcs]
                t[stream] = mean_of(vs, ws)
            if stream == "residual":
                t["size"] = toks[i]["size"] + sum(toks[a]["size"] for a in srcs)
        out.append(t)
    return out


def ref_evit(hidden, residual, imp_feat, sizes, reducible, keep_ratio, metric="clip", fuse=True) -> list[dict]:
    """EViT on one row: keep the top tokens by S; fuse the removed ones at the last removed position."""
    toks = _tokens(hidden, residual, sizes)
    imp = [importance(vec(y), metric) for y in imp_feat]
    red = [i for i in range(len(toks)) if reducible[i]]
    n = len(red)
    r = n_remove(n, keep_ratio, cap=False)
    if r == 0:
        return toks
    n_keep = n - r - 1 if fuse else n - r
    ranked = sorted(red, key=lambda i: (-imp[i], i))
    removed = sorted(ranked[n_keep:])
    out = []
    for t in toks:
        if t["pos"] not in removed:
            out.append(t)
        elif fuse and t["pos"] == removed[-1]:
            ws = [max(imp[i], 0.0) for i in removed]
            if sum(ws) == 0:
                ws = [1.0] * len(removed)
            out.append({
                "pos": t["pos"],
                "hidden": mean_of([toks[i]["hidden"] for i in removed], ws),
                "residual": mean_of([toks[i]["residual"] for i in removed], ws),
                "size": sum(toks[i]["size"] for i in removed),
            })
    return out


def ref_pumer(hidden, residual, sim_feat, sizes, reducible, keep_ratio) -> list[dict]:
    """PuMer on one row: reducible tokens alternate A/B; merge the r most similar A into their best B."""
    toks = _tokens(hidden, residual, sizes)
    feats = [vec(f) for f in sim_feat]
    red = [i for i in range(len(toks)) if reducible[i]]
    r = n_remove(len(red), keep_ratio)
    if r == 0:
        return toks
    set_a, set_b = red[0::2], red[1::2]
    edges = {a: _best(a, set_b, feats) for a in set_a}
    retained = sorted(set_a, key=lambda a: (-edges[a][0], a))[:r]
    out = []
    for t in toks:
        i = t["pos"]
        if i in retained:
            continue
        srcs = [a for a in retained if edges[a][1] == i]
        if srcs:
            t = dict(t)
            ws = [1.0] * (len(srcs) + 1)
            t["hidden"] = mean_of([toks[i]["hidden"]] + [toks[a]["hidden"] for a in srcs], ws)
            t["residual"] = mean_of([toks[i]["residual"]] + [toks[a]["residual"] for a in srcs], ws)
            t["size"] = toks[i]["size"] + sum(toks[a]["size"] for a in srcs)
        out.append(t)
    return out


# ------------------------------------------------------------------------------------------ released code
def ref_parity_utrc(hidden, residual, metric_x, keep_ratio, hidden_mode, residual_mode, clip, tome=False):
    """Released UTRC / PuMer on one row, from METHOD.md §6, with loops. Returns (hidden, residual, kept)."""
    n_tok = len(hidden)
    num_keep = math.ceil(n_tok * keep_ratio)
    r = min(n_tok - num_keep, n_tok // 2)
    h = [vec(v) for v in hidden]
    res = [vec(v) for v in residual]
    if r <= 0:
        return h, res, list(range(n_tok))
    x = [[max(v, 0.0) if clip else v for v in vec(t)] for t in metric_x]
    xn = []
    for t in x:
        norm = math.sqrt(sum(v * v for v in t))
        xn.append([v / norm for v in t])
    dim = len(xn[0])
    if tome:
        a_rows = xn[0::2]
        b_rows = xn[1::2]
    else:
        # each channel sorted independently, descending
        cols = [sorted((xn[i][d] for i in range(n_tok)), reverse=True) for d in range(dim)]
        xs = [[cols[d][i] for d in range(dim)] for i in range(n_tok)]
        mid = n_tok // 2
        a_rows, b_rows = xs[mid:], xs[:mid]
    node_max, node_idx = [], []
    for a in a_rows:
        best, best_j = -math.inf, 0
        for j, b in enumerate(b_rows):
            s = sum(p * q for p, q in zip(a, b))
            if s > best:
                best, best_j = s, j
        node_max.append(best)
        node_idx.append(best_j)
    edge = sorted(range(len(a_rows)), key=lambda i: -node_max[i])
    src_edge = edge[:r]
    dst = [node_idx[i] for i in src_edge]  # edge order, not re-sorted
    src = sorted(src_edge)
    unm = sorted(edge[r:])
    k = r // 2

    def apply(stream, mode):
        odd = {j: list(stream[2 * j + 1]) for j in range(n_tok // 2)}
        count = {j: 1.0 for j in odd}
        src_vals = [stream[2 * i] for i in src]  # j-th smallest source
        if mode == "hybrid":
            masked = [[0.0] * dim for _ in src]
            for d in range(dim):
                top = sorted(range(r), key=lambda m: -src_vals[m][d])[:k]
                for m in top:
                    masked[m][d] = src_vals[m][d]
            src_vals = masked
        for m, j in enumerate(dst):
            if mode == "prune":
                continue
            odd[j] = [u + v for u, v in zip(odd[j], src_vals[m])]
            if mode == "merge":
                count[j] += 1.0
        if mode == "hybrid":
            # size contribution: the k sources that torch's topk over a ones tensor [1, r, 1] picks
            for m, j in enumerate(dst):
                count[j] += hybrid_counts[m]
        out = {}
        for i in unm:
            out[2 * i] = list(stream[2 * i])
        for j in odd:
            out[2 * j + 1] = [v / count[j] for v in odd[j]]
        kept = sorted(out)
        return [out[p] for p in kept], kept

    size_ones = torch.ones(1, r, 1)
    chosen = set(size_ones.topk(k, dim=1).indices.flatten().tolist())
    hybrid_counts = [1.0 if m in chosen else 0.0 for m in range(r)]
    new_h, kept = apply(h, hidden_mode)
    new_r, _ = apply(res, residual_mode)
    return new_h, new_r, kept


def ref_parity_evit(hidden, residual, metric_x, keep_ratio, clip):
    """Released EViT on one row (batch of 1: the reshape never fails, so no retry)."""
    n_tok = len(hidden)
    s = []
    for t in metric_x:
        v = sum(max(u, 0.0) if clip else u for u in vec(t))
        s.append(-math.inf if v == 0 else v)
    num_keep = math.ceil(n_tok * keep_ratio)
    if num_keep >= n_tok:
        return [vec(v) for v in hidden], [vec(v) for v in residual], list(range(n_tok))
    key = sorted(s)[num_keep]
    kept = [i for i in range(n_tok) if not s[i] > key]
    return [vec(hidden[i]) for i in kept], [vec(residual[i]) for i in kept], kept


# ------------------------------------------------------------------------------------------ test inputs
def random_batch(seed, batch, length, dim, lengths, protect_prob=0.0, zero_prob=0.0, ssm_dim=None, max_size=1):
    """A TokenState + features with ragged rows, protected tokens, all-zero tokens and non-unit sizes.

    Padding is filled with huge values so any leak of padding into a real token is visible.
    """
    from tor_exp.reduction import TokenState

    g = torch.Generator().manual_seed(seed)
    ssm_dim = ssm_dim or dim + 2
    hidden = torch.randn(batch, length, dim, generator=g)
    residual = torch.randn(batch, length, dim, generator=g)
    ssm = torch.randn(batch, length, ssm_dim, generator=g)
    zero = torch.rand(batch, length, generator=g) < zero_prob
    hidden[zero] = 0.0
    ssm[zero] = 0.0
    valid = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    protected = (torch.rand(batch, length, generator=g) < protect_prob) & valid
    for t in (hidden, residual, ssm):
        t[~valid] = 1e4
    state = TokenState.initial(hidden, residual, valid, protected)
    if max_size > 1:
        sizes = torch.randint(1, max_size + 1, (batch, length), generator=g).float() * valid
        state = state.replace(sizes=sizes)
    features = {"mixer_out": hidden, "ssm_out": ssm, "residual": residual}
    return state, features


def row_inputs(state, features, b):
    """The real tokens of row b as separate tensors (valid tokens form a prefix of the row)."""
    n = int(state.valid[b].sum())
    sl = slice(0, n)
    return {
        "hidden": state.hidden[b, sl].double(),
        "residual": state.residual[b, sl].double(),
        "sizes": state.sizes[b, sl].tolist(),
        "reducible": state.reducible[b, sl].tolist(),
        "features": {k: v[b, sl].double() for k, v in features.items()},
    }


def assert_row_matches(out, b, ref, atol=1e-4):
    """Row b of a reduced TokenState equals the reference survivor list (positions, values, sizes)."""
    n = int(out.valid[b].sum())
    got_pos = out.positions[b, :n].tolist()
    assert got_pos == [t["pos"] for t in ref], f"row {b}: positions {got_pos} != {[t['pos'] for t in ref]}"
    assert (out.positions[b, n:] == -1).all()
    if not ref:
        return
    exp_h = torch.tensor([t["hidden"] for t in ref], dtype=torch.float64)
    exp_r = torch.tensor([t["residual"] for t in ref], dtype=torch.float64)
    torch.testing.assert_close(out.hidden[b, :n].double(), exp_h, atol=atol, rtol=1e-4)
    torch.testing.assert_close(out.residual[b, :n].double(), exp_r, atol=atol, rtol=1e-4)
    assert out.sizes[b, :n].tolist() == [t["size"] for t in ref]


def batches(max_batch=4, max_len=14, zero=True, protect=True, sizes=False):
    """Hypothesis strategy → (state, features, lengths)."""
    from hypothesis import strategies as st

    @st.composite
    def build(draw):
        batch = draw(st.integers(1, max_batch))
        length = draw(st.integers(2, max_len))
        lengths = draw(st.lists(st.integers(0, length), min_size=batch, max_size=batch))
        lengths[draw(st.integers(0, batch - 1))] = length  # at least one full row
        dim = draw(st.integers(2, 6))
        seed = draw(st.integers(0, 2**31 - 1))
        protect_prob = draw(st.sampled_from([0.0, 0.25])) if protect else 0.0
        zero_prob = draw(st.sampled_from([0.0, 0.3])) if zero else 0.0
        max_size = draw(st.sampled_from([1, 3])) if sizes else 1
        state, features = random_batch(seed, batch, length, dim, lengths, protect_prob, zero_prob, max_size=max_size)
        return state, features, lengths

    return build()

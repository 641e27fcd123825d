"""Quality of token-reduction methods on the shipped reference model (``python -m tor_exp.reference.quality``).

For every method (``none``, paper-mode ``utrc``/``evit``/``pumer``/``ltmp`` and the parity modes
``utrc_official``/``evit_official``/``pumer_official``) and FLOPs target (10/20/30 %), scores the
``reference_heldout`` items and writes a markdown table + PNG under ``docs/``.

Scoring: input = (context + continuation)[:-1]; the positions whose logits predict the continuation are
``protected`` (unreducible) and logits are gathered at those original positions (exact alignment). The parity
modes reproduce the released code and ignore protection; they are scored with the same exact gather when every
scored position survived, otherwise with lm-eval's offset rule on the shortened output (the last len(continuation)
logit rows, as the released evaluation does) and the item is counted as ``misaligned``.
LTMP is calibrated on windows of the *calib* split (documents disjoint from the task's held-out documents, never
the task items), with the same protection pattern.

Metrics: continuation perplexity per byte = exp(total continuation NLL / continuation bytes); lambada-style
perplexity = exp(-mean per-item loglikelihood); acc = the greedy continuation is exact; realised backbone FLOPs
reduction from the real per-layer token counts (pooled over items).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from tor_exp.reference import ASSETS_DIR, TASK_DIR

METHODS = ("utrc", "evit", "pumer", "ltmp", "utrc_official", "evit_official", "pumer_official")
TARGETS = (0.1, 0.2, 0.3)
REPO = Path(__file__).resolve().parents[2]


def load_reference(model_yaml: Path = REPO / "conf/model/reference.yaml"):
    """Model + tokenizer + ModelConfig through the public loader and the ``model=reference`` YAML."""
    from omegaconf import OmegaConf

    from tor_exp.models import ModelConfig, load_model

    raw = OmegaConf.to_container(OmegaConf.load(model_yaml))
    raw.pop("defaults", None)
    cfg = ModelConfig(**raw)
    model, tok = load_model(cfg)
    return model, tok, cfg


def make_batch(pairs: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded inputs (full[:-1]), attention mask, protected mask, and the scored positions/targets.

    ``pairs``: (full token ids, continuation length). Scored positions of row b are
    ``len(full)-1-k .. len(full)-2`` for a continuation of k tokens; targets are the continuation tokens.
    """
    inputs = [full[:-1] for full, _ in pairs]
    n = max(len(x) for x in inputs)
    k_max = max(k for _, k in pairs)
    ids = torch.full((len(pairs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), n), dtype=torch.long)
    protected = torch.zeros((len(pairs), n), dtype=torch.bool)
    pos = torch.full((len(pairs), k_max), -1, dtype=torch.long)
    tgt = torch.zeros((len(pairs), k_max), dtype=torch.long)
    for b, ((full, k), x) in enumerate(zip(pairs, inputs)):
        ids[b, : len(x)] = torch.tensor(x)
        mask[b, : len(x)] = 1
        protected[b, len(x) - k: len(x)] = True
        pos[b, :k] = torch.arange(len(x) - k, len(x))
        tgt[b, :k] = torch.tensor(full[-k:])
    return {"input_ids": ids, "attention_mask": mask, "protected": protected, "positions": pos, "targets": tgt}


def score_batch(logits: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, batch: dict[str, torch.Tensor],
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row continuation loglikelihood, greedy-exact flag and misaligned flag.

    Exact gather where every scored position survived (one-hot match of original positions), otherwise the
    offset rule: the last k valid logit rows of the reduced output.
    """
    want = batch["positions"]  # [B, K], -1 = unused
    used = want >= 0
    match = (positions[:, None, :] == want[:, :, None]) & valid[:, None, :] & used[:, :, None]  # [B, K, N']
    found = match.any(-1)
    exact_idx = match.float().argmax(-1)  # [B, K]
    n_valid = valid.sum(1)
    k = used.sum(1)
    offset_idx = (n_valid - k)[:, None] + torch.arange(want.shape[1])[None, :]
    misaligned = (found | ~used).all(1).logical_not()
    idx = torch.where(misaligned[:, None], offset_idx, exact_idx).clamp(min=0, max=logits.shape[1] - 1)
    logp = torch.log_softmax(logits.float(), dim=-1)
    rows = logp.gather(1, idx[..., None].expand(-1, -1, logp.shape[-1]))  # [B, K, V]
    tok_ll = rows.gather(-1, batch["targets"][..., None])[..., 0]
    greedy = rows.argmax(-1) == batch["targets"]
    ll = (tok_ll * used).sum(1)
    exact = (greedy | ~used).all(1)
    return ll, exact, misaligned


def calibration_batches(tok, n_windows: int, ctx: int, k: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Windows of the shipped calibration text (calib split) with the task's protection pattern."""
    docs = [json.loads(l)["text"] for l in (ASSETS_DIR / "calibration.jsonl").read_text().splitlines() if l.strip()]
    ids = [t for d in docs for t in tok(d)["input_ids"]]
    step = max(1, (len(ids) - ctx - 1) // n_windows)
    pairs = [(ids[i: i + ctx + 1], k) for i in range(0, step * n_windows, step)]
    return [make_batch(pairs[i: i + batch_size], tok.pad_token_id) for i in range(0, len(pairs), batch_size)]


def run_config(model, batches, method, schedule) -> dict[str, Any]:
    """Score all batches with one (method, schedule); None method = unreduced."""
    from tor_exp.models import ModelShape, realised_flops_reduction, reduced_forward

    lls, exacts, mis, counts, n_in, k_tot = [], [], [], [], [], 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for b in batches:
            out = reduced_forward(model, b["input_ids"], b["attention_mask"], b["protected"], logits="all",
                                  method=method, schedule=schedule)
            ll, ex, mi = score_batch(out.logits, out.positions, out.valid, b)
            lls.append(ll), exacts.append(ex), mis.append(mi)
            counts.append(out.tokens_per_layer.cpu()), n_in.append(out.n_input.cpu())
            k_tot += int((b["positions"] >= 0).sum())
    ll = torch.cat(lls)
    fl = realised_flops_reduction(torch.cat(counts), torch.cat(n_in), ModelShape.from_hf_config(model.config))
    return {"cont_ppl_per_byte": math.exp(-float(ll.sum()) / k_tot), "lambada_ppl": math.exp(-float(ll.mean())),
            "acc": float(torch.cat(exacts).float().mean()), "misaligned": int(torch.cat(mis).sum()),
            "flops_backbone": fl["backbone"], "flops_total": fl["total"], "flops_proxy": fl["proxy"],
            "seconds": time.perf_counter() - t0}


def write_report(rows: list[dict[str, Any]], out_md: Path, out_png: Path, n_items: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = next(r for r in rows if r["method"] == "none")
    lines = [f"Reference model, `reference_heldout` ({n_items} items), exact alignment (continuation protected).",
             "", "| method | target FLOPs | ρ | realised backbone FLOPs ↓ | cont. ppl/byte | Δ vs none | "
             "lambada-style ppl | acc | misaligned |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tgt = "–" if r["target"] is None else f"{r['target']:.0%}"
        rho = "–" if r["keep_ratio"] is None else f"{r['keep_ratio']:.4f}"
        lines.append(f"| {r['method']} | {tgt} | {rho} | {r['flops_backbone']:.1%} | {r['cont_ppl_per_byte']:.4f} | "
                     f"{r['cont_ppl_per_byte'] - base['cont_ppl_per_byte']:+.4f} | {r['lambada_ppl']:.4g} | "
                     f"{r['acc']:.3f} | {r['misaligned']} |")
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, methods, log in ((axes[0], [m for m in METHODS if not m.endswith("_official")], False),
                             (axes[1], list(METHODS), True)):
        for m in methods:
            pts = sorted((r["flops_backbone"], r["cont_ppl_per_byte"]) for r in rows if r["method"] == m)
            if pts:
                ax.plot(*zip(*pts), "o--" if m.endswith("_official") else "o-", label=m)
        ax.axhline(base["cont_ppl_per_byte"], color="black", lw=1, label="none")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("realised backbone FLOPs reduction")
        ax.set_ylabel("continuation perplexity per byte" + (" (log)" if log else ""))
        ax.legend(fontsize=8)
    axes[0].set_title("paper-mode methods (exact alignment)")
    axes[1].set_title("with parity modes (released code)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="token-reduction quality on the reference model")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--targets", nargs="+", type=float, default=list(TARGETS))
    ap.add_argument("--limit", type=int, default=None, help="first N task items only")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--calib-windows", type=int, default=32)
    ap.add_argument("--model-yaml", type=Path, default=REPO / "conf/model/reference.yaml")
    ap.add_argument("--out-md", type=Path, default=REPO / "docs/reference_quality.md")
    ap.add_argument("--out-png", type=Path, default=REPO / "docs/reference_quality.png")
    ap.add_argument("--out-json", type=Path, default=REPO / "docs/reference_quality.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from tor_exp.models import build_schedule
    from tor_exp.reduction import build_method, registered_methods

    model, tok, model_cfg = load_reference(args.model_yaml)
    items = [json.loads(l) for l in (TASK_DIR / "reference_heldout.jsonl").read_text().splitlines() if l.strip()]
    items = items[: args.limit] if args.limit else items
    pairs = [(tok(it["context"] + it["continuation"])["input_ids"], len(tok(it["continuation"])["input_ids"]))
             for it in items]
    batches = [make_batch(pairs[i: i + args.batch_size], tok.pad_token_id)
               for i in range(0, len(pairs), args.batch_size)]
    seq_len = int(sum(len(p[0]) - 1 for p in pairs) / len(pairs))
    k_mean = round(sum(p[1] for p in pairs) / len(pairs))
    rows = [{"method": "none", "target": None, "keep_ratio": None, **run_config(model, batches, None, None)}]
    print(json.dumps(rows[-1]), flush=True)
    for name in args.methods:
        cfg_cls = registered_methods()[name][0]
        for f in args.targets:
            rcfg = cfg_cls(method=name, target_flops=f, keep_ratio=None)
            schedule = build_schedule(rcfg, model_cfg, seq_len=seq_len)
            method = build_method(rcfg)
            if hasattr(method, "calibrating"):
                from tor_exp.models import reduced_forward

                calib = calibration_batches(tok, args.calib_windows, seq_len, k_mean, args.batch_size)
                with torch.no_grad():
                    method.calibrate(calib, lambda b: reduced_forward(
                        model, b["input_ids"], b["attention_mask"], b["protected"], method=method, schedule=schedule))
            rows.append({"method": name, "target": f, "keep_ratio": schedule.keep_ratio,
                         **run_config(model, batches, method, schedule)})
            print(json.dumps(rows[-1]), flush=True)
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps({"n_items": len(items), "locations": model_cfg.locations, "rows": rows},
                                        indent=2) + "\n")
    write_report(rows, args.out_md, args.out_png, len(items))
    print(args.out_md.read_text())


if __name__ == "__main__":
    main()

"""Evaluate the trained reference model against n-gram baselines, assemble the shipped assets, plot the loss.

``python -m tor_exp.reference.evaluate --data /tmp/refdata --run /tmp/reftrain`` copies ``<run>/export`` (fp16
safetensors + config) into ``tor_exp/reference/assets/`` (``--assets`` another folder: the hybrid reference goes to
``tor_exp/reference/hybrid/``), saves the tokenizer there, reloads the shipped weights
in fp32 (so the numbers are those of the shipped files), and writes ``assets/metrics.json``,
``assets/bigram_counts.npy`` (training-split byte-bigram counts, for the tests), ``assets/train_log.jsonl`` and
``assets/loss_curve.png``. ``metrics.json`` also records the full ``reference_heldout_mc`` accuracy through the
evaluation runner (``--mc-limit`` to cut it short).

A run warm-started with ``train --init-from`` continues an earlier one: ``--history <folder>`` (a copy of the
earlier assets' ``train_log.jsonl`` and ``metrics.json``) makes the shipped log, curve and ``train_args`` cover both
phases, with phase-2 steps numbered after the last phase-1 step. ``--until-step`` leaves out what a run stopped by
hand logged after the checkpoint that was exported.

All metrics are over the same targets: the held-out split as one byte stream cut into non-overlapping windows
of ``--seq`` tokens, predicting positions 1..seq-1 of each window from inside the window; document-separator
(EOS) targets are excluded, so every scored token is one byte and nats/token = nats/byte.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from tor_exp.reference import ASSETS_DIR, TASK_DIR
from tor_exp.reference.data import read_split
from tor_exp.reference.tokenizer import EOS_ID, VOCAB_SIZE, build_byte_tokenizer
from tor_exp.reference.train import encode_docs

LN2 = math.log(2.0)


def windows(stream: torch.Tensor, seq: int) -> torch.Tensor:
    """Non-overlapping [n, seq] windows (the tail shorter than seq is dropped)."""
    n = stream.numel() // seq
    return stream[: n * seq].long().view(n, seq)


@torch.no_grad()
def model_nll(model: torch.nn.Module, wins: torch.Tensor, batch: int = 8) -> tuple[float, int]:
    """Total next-token NLL (nats) and count over targets wins[:, 1:] that are not EOS."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, wins.shape[0], batch):
        w = wins[i:i + batch]
        logp = torch.log_softmax(model(input_ids=w[:, :-1]).logits.float(), dim=-1)
        tgt = w[:, 1:]
        nll = -logp.gather(-1, tgt[..., None])[..., 0]
        mask = tgt != EOS_ID
        total += float(nll[mask].sum())
        count += int(mask.sum())
    return total, count


@torch.no_grad()
def sequence_nll_per_byte(model: torch.nn.Module, texts: list[str]) -> list[float]:
    """Mean next-byte NLL of each text on its own (positions 1..n-1), one forward per text."""
    model.eval()
    out = []
    for t in texts:
        ids = torch.tensor([list(t.encode("utf-8"))])
        logp = torch.log_softmax(model(input_ids=ids[:, :-1]).logits.float(), dim=-1)
        out.append(float(-logp.gather(-1, ids[:, 1:, None]).mean()))
    return out


def bigram_counts(stream: torch.Tensor) -> np.ndarray:
    """[V, V] counts of (previous token, next token) pairs."""
    s = stream.long()
    flat = (s[:-1] * VOCAB_SIZE + s[1:]).numpy()
    return np.bincount(flat, minlength=VOCAB_SIZE * VOCAB_SIZE).reshape(VOCAB_SIZE, VOCAB_SIZE).astype(np.int64)


def ngram_logprobs(counts: np.ndarray) -> dict[str, np.ndarray]:
    """[V, V] log p(next | prev) tables: add-one unigram, add-one bigram, interpolated Kneser-Ney bigram (d=0.75)."""
    c = counts.astype(np.float64)
    V = c.shape[0]
    uni = c.sum(0)
    p_uni = (uni + 1) / (uni.sum() + V)
    p_add1 = (c + 1) / (c.sum(1, keepdims=True) + V)
    d = 0.75
    cont = (c > 0).sum(0).astype(np.float64)
    p_cont = (cont + 1) / (cont.sum() + V)  # add-one keeps unseen bytes possible
    row = c.sum(1, keepdims=True)
    types = (c > 0).sum(1, keepdims=True)
    lam = np.where(row > 0, d * types / np.maximum(row, 1), 1.0)
    p_kn = np.maximum(c - d, 0) / np.maximum(row, 1) + lam * p_cont[None, :]
    return {"unigram_add1": np.log(np.broadcast_to(p_uni, (V, V))), "bigram_add1": np.log(p_add1),
            "bigram_kn": np.log(p_kn)}


def ngram_nll(table: np.ndarray, wins: torch.Tensor) -> tuple[float, int]:
    """Total NLL and count of a [V, V] log-prob table over the same targets as :func:`model_nll`."""
    prev, tgt = wins[:, :-1].numpy(), wins[:, 1:].numpy()
    mask = tgt != EOS_ID
    return float(-table[prev, tgt][mask].sum()), int(mask.sum())


def summary(total: float, count: int) -> dict[str, float]:
    nats = total / count
    return {"nats_per_byte": nats, "perplexity_per_byte": math.exp(nats), "bits_per_byte": nats / LN2,
            "n_bytes": count}


def write_calibration(data_dir: Path, assets: Path = ASSETS_DIR, max_bytes: int = 32_000) -> None:
    """Ship a small slice of the calib split (documents disjoint from train and held-out) for LTMP calibration."""
    out, total = [], 0
    for d in read_split(data_dir, "calib"):
        text = d["text"][: max_bytes - total]
        if len(text) < 400:
            continue
        out.append(json.dumps({"id": d["id"], "text": text}))
        total += len(text)
        if total >= max_bytes:
            break
    (assets / "calibration.jsonl").write_text("\n".join(out) + "\n")


def read_log(path: Path, until_step: int | None = None) -> list[dict]:
    """Log records, one per step (a resumed run may repeat steps: the last record wins), in step order; with
    ``until_step``, none after it (a run stopped by hand logs past the checkpoint that was shipped)."""
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    recs = [r for r in recs if until_step is None or r["step"] <= until_step]
    return sorted({r["step"]: r for r in recs}.values(), key=lambda r: r["step"])


def merge_logs(history: list[dict], run: list[dict], offset: int | None = None) -> list[dict]:
    """The earlier records (``phase`` 1 unless already phased) and then the warm-started run's as the next phase,
    its steps numbered after ``offset`` (the earlier phase's step count; default its last logged step).
    ``phase_step`` keeps the run's own number; ``elapsed_s`` stays the time since that invocation started."""
    if not history:
        return run
    offset = history[-1]["step"] if offset is None else offset
    hist = [{**r, "phase": r.get("phase", 1)} for r in history]
    return hist + [{**r, "step": r["step"] + offset, "phase_step": r["step"], "phase": hist[-1]["phase"] + 1}
                   for r in run]


def plot_curve(recs: list[dict], out_png: Path, baselines: dict[str, float],
               title: str = "Reference Mamba-2 (24 layers, byte-level) on Python 3.11 docs prose") -> None:
    """Train loss (EMA) and validation loss vs step, with held-out n-gram baselines as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in recs]
    ema, smoothed = None, []
    for r in recs:
        ema = r["loss"] if ema is None else 0.8 * ema + 0.2 * r["loss"]
        smoothed.append(ema)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(steps, [s / LN2 for s in smoothed], label="train (EMA)")
    val = [(r["step"], r["val_loss"] / LN2) for r in recs if "val_loss" in r]
    if val:
        ax.plot(*zip(*val), "o-", label="validation (calib split)")
    for name, nats in baselines.items():
        ax.axhline(nats / LN2, ls="--", lw=1, color="gray")
        ax.text(steps[-1], nats / LN2, f" {name}", va="bottom", ha="right", fontsize=8, color="gray")
    ax.set_xlabel("step (4 x 512 bytes)")
    ax.set_ylabel("bits per byte")
    ax.set_ylim(bottom=max(0.0, min(s / LN2 for s in smoothed) - 0.5), top=min(8.5, max(baselines.values()) / LN2 + 1))
    starts = [r["step"] - r["phase_step"] for prev, r in zip(recs, recs[1:]) if r.get("phase") != prev.get("phase")]
    for x in starts:
        ax.axvline(x, ls=":", lw=1, color="black")
        ax.text(x, 0.97, " warm restart\n (new optimizer + schedule)", transform=ax.get_xaxis_transform(), va="top",
                fontsize=8)
    ax.set_title(title)
    ax.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def load_shipped(assets: Path = ASSETS_DIR) -> torch.nn.Module:
    """The shipped fp16 weights (their own HF class, from config.json), upcast to fp32."""
    return AutoModelForCausalLM.from_pretrained(assets, dtype=torch.float32).eval()


def mc_accuracy(limit: int | None, assets: Path = ASSETS_DIR) -> dict:
    """``reference_heldout_mc`` on the shipped weights through the evaluation runner (lm-eval), no reduction."""
    from tor_exp.evaluation.config import EvalConfig
    from tor_exp.evaluation.runner import evaluate as run_eval

    cfg = EvalConfig(tasks=["reference_heldout_mc"], include_paths=["pkg://tor_exp/reference/task"], limit=limit,
                     batch_size=8, compare_baseline=False)
    m = run_eval(load_shipped(assets), build_byte_tokenizer(), cfg,
                 reduction_label="none")["metrics"]["reference_heldout_mc"]
    n = sum(1 for _ in (TASK_DIR / "reference_heldout_mc.jsonl").open()) if limit is None else limit
    return {"acc": m["acc"], "acc_norm": m["acc_norm"], "acc_stderr": m["acc_stderr"], "n_items": n}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="evaluate + assemble the reference model assets")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--run", type=Path, required=True, help="training output folder (with export/)")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--n-ref-items", type=int, default=6)
    ap.add_argument("--history", type=Path, default=None,
                    help="earlier phase's assets (train_log.jsonl, metrics.json) when --run was warm-started")
    ap.add_argument("--history-steps", type=int, default=None,
                    help="steps of the earlier phase (default: its metrics.json train_steps, else its last logged step)")
    ap.add_argument("--until-step", type=int, default=None,
                    help="the exported checkpoint's step: later log records (a run stopped by hand) are left out")
    ap.add_argument("--mc-limit", type=int, default=None, help="reference_heldout_mc items to score (default all)")
    ap.add_argument("--assets", type=Path, default=ASSETS_DIR,
                    help="where the shipped files go (the Mamba-2's folder by default; the hybrid's is "
                         "tor_exp/reference/hybrid); only the default folder also gets calibration text and bigram "
                         "counts, which both models share")
    ap.add_argument("--title", default=None, help="loss-curve title (default: the Mamba-2's)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    assets = args.assets
    shared = assets.resolve() == ASSETS_DIR.resolve()
    assets.mkdir(parents=True, exist_ok=True)
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        if (args.run / "export" / f).exists():
            shutil.copy(args.run / "export" / f, assets / f)
    build_byte_tokenizer().save_pretrained(assets)
    log = read_log(args.run / "train_log.jsonl", args.until_step)
    train_args = {p.name: json.loads(p.read_text()) for p in sorted(args.run.glob("train_args*.json"))}
    if args.history is not None:
        old = json.loads((args.history / "metrics.json").read_text())
        log = merge_logs(read_log(args.history / "train_log.jsonl"), log, args.history_steps or old.get("train_steps"))
        phases = old.get("train_phases", {"phase1": old["train_args"]})
        train_args = {**phases, f"phase{len(phases) + 1}": train_args}
    (assets / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))

    train_stream = encode_docs(read_split(args.data, "train"))
    counts = bigram_counts(train_stream)
    if shared:
        write_calibration(args.data)
        np.save(ASSETS_DIR / "bigram_counts.npy", counts.astype(np.uint32))
    tables = ngram_logprobs(counts)
    wins = windows(encode_docs(read_split(args.data, "heldout")), args.seq)
    model = load_shipped(assets)
    results = {"model": summary(*model_nll(model, wins, args.batch))}
    for name, table in tables.items():
        results[name] = summary(*ngram_nll(table, wins))
    items = [json.loads(line) for line in (TASK_DIR / "reference_heldout.jsonl").read_text().splitlines()]
    ref_texts = [it["context"] + it["continuation"] for it in items[: args.n_ref_items]]
    meta = json.loads((args.data / "meta.json").read_text())
    metrics = {
        "heldout": results, "eval_seq": args.seq, "corpus": meta,
        "n_params": sum(p.numel() for p in model.parameters()),
        "reference_items": {"ids": [it["id"] for it in items[: args.n_ref_items]],
                            "nll_per_byte": sequence_nll_per_byte(model, ref_texts)},
        ("train_phases" if args.history is not None else "train_args"): train_args,
        "train_steps": log[-1]["step"],
        "reference_heldout_mc": mc_accuracy(args.mc_limit, assets),
    }
    (assets / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_curve(log, assets / "loss_curve.png", {k: results[k]["nats_per_byte"] for k in ("unigram_add1", "bigram_kn")},
               **({"title": args.title} if args.title else {}))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Train a small reference byte-level LM on CPU: the Mamba-2 (``--arch mamba2``), the Nemotron-H-style hybrid
(``--arch nemotron_h``: Mamba-2 mixers, attention and MLP blocks in the order of ``--pattern``) or the
Qwen3-Next-style Gated DeltaNet hybrid (``--arch qwen3_next``: ``--pattern`` of G = Gated DeltaNet, A = gated
attention, each layer followed by a dense gated MLP).

Usage: ``python -m tor_exp.reference.train --data /tmp/refdata --out /tmp/reftrain`` (every hyper-parameter is an
argparse option with its default; the full set is written to ``<out>/train_args.json``). The run logs one JSON line
per logged step to ``<out>/train_log.jsonl``, checkpoints to ``<out>/ckpt.pt`` every ``--ckpt-every`` steps (so a
partial run is usable: ``--export-only`` turns a checkpoint into shipped assets), stops cleanly at ``--deadline``
(UTC ``HH:MM``) and finally exports fp16 safetensors + tokenizer to ``<out>/export``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import time
from pathlib import Path

import torch
from transformers import (Mamba2Config, Mamba2ForCausalLM, NemotronHConfig, NemotronHForCausalLM, PreTrainedConfig,
                          Qwen3NextConfig, Qwen3NextForCausalLM)

from tor_exp.reference.data import read_split
from tor_exp.reference.tokenizer import EOS_ID, PAD_ID, VOCAB_SIZE, build_byte_tokenizer


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Train a reference byte LM (Mamba-2 or Nemotron-H hybrid) on CPU")
    ap.add_argument("--data", type=Path, required=True, help="folder written by tor_exp.reference.data")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="mamba2")
    ap.add_argument("--pattern", default=None,
                    help="nemotron_h: one block per character, M = Mamba-2 mixer, * = attention, - = MLP "
                         f"(Nemotron-H's hybrid_override_pattern; default {PATTERNS['nemotron_h']}); qwen3_next: "
                         f"one layer per character, G = Gated DeltaNet, A = gated attention (default "
                         f"{PATTERNS['qwen3_next']}); sets the depth")
    ap.add_argument("--attn-heads", type=int, default=5,
                    help="nemotron_h, qwen3_next: attention heads (key/value heads alike)")
    ap.add_argument("--attn-head-dim", type=int, default=32, help="nemotron_h, qwen3_next")
    ap.add_argument("--mlp-size", type=int, default=640,
                    help="nemotron_h: MLP intermediate size (ReLU²); qwen3_next: each layer's gated MLP")
    ap.add_argument("--linear-heads", type=int, default=4, help="qwen3_next: Gated DeltaNet key and value heads")
    ap.add_argument("--linear-key-dim", type=int, default=32, help="qwen3_next: Gated DeltaNet key head size")
    ap.add_argument("--linear-value-dim", type=int, default=64, help="qwen3_next: Gated DeltaNet value head size")
    ap.add_argument("--d-model", type=int, default=160)
    ap.add_argument("--n-layer", type=int, default=24)
    ap.add_argument("--expand", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--state-size", type=int, default=32)
    ap.add_argument("--n-groups", type=int, default=1)
    ap.add_argument("--conv-kernel", type=int, default=4)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine decays to lr * this")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--schedule", choices=("steps", "time"), default="steps",
                    help="cosine over --steps, or over wall-clock time from (re)start to --deadline (robust to a "
                         "shared, contended CPU; --steps is then only an upper bound)")
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.95))
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-batches", type=int, default=4)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--deadline", type=str, default=None, help="UTC HH:MM: stop (and export) when reached")
    ap.add_argument("--resume", action="store_true", help="continue from <out>/ckpt.pt")
    ap.add_argument("--export-only", action="store_true", help="export <out>/ckpt.pt and exit")
    ap.add_argument("--init-from", type=Path, default=None,
                    help="warm start: a folder with model.safetensors (e.g. the shipped assets) whose architecture "
                         "matches the options; weights only, a fresh optimizer and schedule (step numbering restarts)")
    return ap


#: the default ``--pattern`` of each hybrid architecture (the shipped hybrid's; a 3 : 1 Gated DeltaNet hybrid)
PATTERNS = {"nemotron_h": "M-M*M-M-M*M-M-M-M*M-M-M-", "qwen3_next": "GGGA" * 4}


def pattern(args: argparse.Namespace) -> str:
    """``--pattern``, or the architecture's default."""
    return args.pattern or PATTERNS.get(args.arch, "")


def model_config(args: argparse.Namespace) -> PreTrainedConfig:
    """HF config of ``--arch``; the Mamba-2 mixers' num_heads follows from expand * d_model / head_dim."""
    if args.arch == "qwen3_next":
        layers = pattern(args)
        if not layers or set(layers) - set("GA"):
            raise ValueError(f"--pattern={layers!r}: qwen3_next layers are G (Gated DeltaNet) or A (attention)")
        kinds = {"G": "linear_attention", "A": "full_attention"}
        # dense MLPs only (no experts at this size); untied head, like the shipped hybrid
        return Qwen3NextConfig(
            vocab_size=VOCAB_SIZE, hidden_size=args.d_model, num_hidden_layers=len(layers),
            layer_types=[kinds[c] for c in layers], mlp_only_layers=list(range(len(layers))), num_experts=0,
            intermediate_size=args.mlp_size, num_attention_heads=args.attn_heads,
            num_key_value_heads=args.attn_heads, head_dim=args.attn_head_dim,
            linear_num_key_heads=args.linear_heads, linear_num_value_heads=args.linear_heads,
            linear_key_head_dim=args.linear_key_dim, linear_value_head_dim=args.linear_value_dim,
            linear_conv_kernel_dim=args.conv_kernel, tie_word_embeddings=False, eos_token_id=EOS_ID,
            bos_token_id=EOS_ID, pad_token_id=PAD_ID, use_cache=True,
        )
    d_inner = args.expand * args.d_model
    if d_inner % args.head_dim:
        raise ValueError(f"expand*d_model={d_inner} not divisible by head_dim={args.head_dim}")
    if args.arch == "nemotron_h":
        # Nemotron-H's class never ties the LM head to the embedding, so the config must not claim it does
        return NemotronHConfig(
            vocab_size=VOCAB_SIZE, hidden_size=args.d_model, hybrid_override_pattern=pattern(args),
            num_hidden_layers=len(pattern(args)), num_attention_heads=args.attn_heads,
            num_key_value_heads=args.attn_heads, head_dim=args.attn_head_dim, intermediate_size=args.mlp_size,
            mamba_num_heads=d_inner // args.head_dim, mamba_head_dim=args.head_dim, ssm_state_size=args.state_size,
            n_groups=args.n_groups, conv_kernel=args.conv_kernel, chunk_size=args.chunk_size,
            tie_word_embeddings=False, eos_token_id=EOS_ID, bos_token_id=EOS_ID, pad_token_id=PAD_ID,
            residual_in_fp32=True, use_cache=True,
        )
    return Mamba2Config(
        vocab_size=VOCAB_SIZE, hidden_size=args.d_model, num_hidden_layers=args.n_layer, expand=args.expand,
        head_dim=args.head_dim, num_heads=d_inner // args.head_dim, state_size=args.state_size,
        n_groups=args.n_groups, conv_kernel=args.conv_kernel, chunk_size=args.chunk_size,
        tie_word_embeddings=True, eos_token_id=EOS_ID, bos_token_id=EOS_ID, pad_token_id=PAD_ID,
        residual_in_fp32=True, use_cache=True,
    )


ARCHS = {"mamba2": Mamba2ForCausalLM, "nemotron_h": NemotronHForCausalLM, "qwen3_next": Qwen3NextForCausalLM}


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    return ARCHS[args.arch](model_config(args))


def encode_docs(docs: list[dict]) -> torch.Tensor:
    """Concatenate documents as bytes with one EOS after each; int16 keeps 6 MB of text at 12 MB."""
    parts = []
    for d in docs:
        parts.append(torch.frombuffer(bytearray(d["text"].encode("utf-8")), dtype=torch.uint8).to(torch.int16))
        parts.append(torch.tensor([EOS_ID], dtype=torch.int16))
    return torch.cat(parts)


def sample_batch(stream: torch.Tensor, batch: int, seq: int, gen: torch.Generator) -> torch.Tensor:
    """Random windows of seq+1 tokens (inputs and shifted targets come from the same window)."""
    starts = torch.randint(0, stream.numel() - seq - 1, (batch,), generator=gen)
    idx = starts[:, None] + torch.arange(seq + 1)[None, :]
    return stream[idx].long()


def lr_at(step: int, args: argparse.Namespace, time_frac: float | None = None) -> float:
    """Linear warm-up then cosine decay to lr * min_lr_ratio (over steps, or over the given time fraction)."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    if time_frac is not None:
        frac = min(1.0, max(0.0, time_frac))
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def lm_loss(model: torch.nn.Module, window: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross-entropy (nats) over a [B, T+1] window."""
    logits = model(input_ids=window[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), window[:, 1:].reshape(-1))


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, window: torch.Tensor, lr: float,
               clip: float) -> float:
    """One AdamW step with grad-norm clipping; returns the pre-step loss."""
    for g in opt.param_groups:
        g["lr"] = lr
    model.train()
    loss = lm_loss(model, window)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return float(loss.detach())


def make_optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.AdamW:
    """AdamW; no weight decay on norms, biases, A_log, D, dt_bias (1-D parameters)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=tuple(args.betas))


@torch.no_grad()
def eval_loss(model: torch.nn.Module, stream: torch.Tensor, n_batches: int, batch: int, seq: int) -> float:
    """Mean loss on fixed (seeded) windows of a held-aside stream."""
    model.eval()
    gen = torch.Generator().manual_seed(1234)
    losses = [float(lm_loss(model, sample_batch(stream, batch, seq, gen))) for _ in range(n_batches)]
    return sum(losses) / len(losses)


def export(model: torch.nn.Module, out_dir: Path) -> None:
    """Save fp16 safetensors (halves the size; fp32 at load reproduces the reported numbers) + tokenizer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    half = type(model)(model.config)
    half.load_state_dict(model.state_dict())
    half = half.to(torch.float16)
    half.config.dtype = "float16"
    half.save_pretrained(out_dir, safe_serialization=True)
    build_byte_tokenizer().save_pretrained(out_dir)


def load_init(model: torch.nn.Module, folder: Path) -> None:
    """Copy (upcast) weights from ``folder/model.safetensors``; every key must match (a tied lm_head excepted)."""
    from safetensors.torch import load_file

    state = {k: v.float() for k, v in load_file(folder / "model.safetensors").items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if model.config.tie_word_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"--init-from {folder}: missing {missing}, unexpected {unexpected}")
    model.tie_weights()


def _deadline_ts(hhmm: str | None) -> float | None:
    if not hhmm:
        return None
    now = dt.datetime.now(dt.timezone.utc)
    h, m = map(int, hhmm.split(":"))
    t = now.replace(hour=h, minute=m, second=0, microsecond=0)
    if t < now:
        t += dt.timedelta(days=1)
    return t.timestamp()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.pattern = pattern(args) or None  # train_args.json records the pattern that was used
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    model = build_model(args)
    opt = make_optimizer(model, args)
    ckpt = args.out / "ckpt.pt"
    step0 = 0
    if args.resume or args.export_only:
        state = torch.load(ckpt, map_location="cpu")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step0 = state["step"]
    elif args.init_from is not None:
        load_init(model, args.init_from)
    if args.export_only:
        export(model, args.out / "export")
        return
    args_file = args.out / (f"train_args_resume{step0}.json" if step0 else "train_args.json")
    args_file.write_text(json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                                    indent=2))
    train_stream = encode_docs(read_split(args.data, "train"))
    val_stream = encode_docs(read_split(args.data, "calib"))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params={n_params} train_bytes={train_stream.numel()} val_bytes={val_stream.numel()}", flush=True)
    gen = torch.Generator().manual_seed(args.seed + step0)
    deadline = _deadline_ts(args.deadline)
    if args.schedule == "time" and deadline is None:
        raise ValueError("--schedule time needs --deadline")
    log = (args.out / "train_log.jsonl").open("a")
    t0 = time.time()
    step = step0
    for step in range(step0, args.steps):
        tf = (time.time() - t0) / (deadline - t0) if args.schedule == "time" else None
        lr = lr_at(step, args, tf)
        loss = train_step(model, opt, sample_batch(train_stream, args.batch, args.seq, gen), lr, args.clip)
        rec: dict = {"step": step + 1, "loss": loss, "lr": lr, "elapsed_s": time.time() - t0}
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            rec["val_loss"] = eval_loss(model, val_stream, args.eval_batches, args.batch, args.seq)
        if (step + 1) % args.log_every == 0 or "val_loss" in rec or step == step0:
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(json.dumps(rec), flush=True)
        done = deadline is not None and time.time() > deadline
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps or done:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1}, ckpt)
        if done:
            print(f"deadline reached at step {step + 1}", flush=True)
            break
    export(model, args.out / "export")


if __name__ == "__main__":
    main()

"""What the backbone loop costs when it does not reduce: tor_exp's lm-eval backend vs lm-eval's own HFLM.

``python launchers/lm_overhead.py [--models reference reference_hybrid] [--limit 200] [--batch-size 8]
[--repeats 3]`` loads each model once and runs lm-eval's ``simple_evaluate`` on ``reference_heldout_mc`` with
:class:`~tor_exp.evaluation.lm.TorExpLM` (``reduction=none``: the unpatched model through
:func:`~tor_exp.models.backbone.forward`) and with ``lm_eval.models.huggingface.HFLM(pretrained=<the same model
object>)`` in the same process, interleaved (so a drifting shared machine slows both alike), and reports the
minimum over repeats of

* ``eval``: the whole ``simple_evaluate`` call (task building, requests, scoring, metrics), and
* ``model``: the time inside the LM's ``loglikelihood`` (request sorting, batching, the forwards, scoring),

as ratios TorExpLM / HFLM. It also checks that every request's log-likelihood agrees (|Δ| ≤ ``--tol``, 1e-4 nats):
a faster loop that scores differently is no result. Exit 1 when they disagree. The numbers are in
docs/benchmarks.md ("The loop without a reduction"). A script beside the package, not part of it: it composes
configs (``tor_exp.config``) and drives lm-eval, as the entry points do.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TASK = "reference_heldout_mc"
TASK_FOLDER = "pkg://tor_exp/reference/task"
#: items of the untimed warm-up round (first calls allocate and fill lm-eval's and torch's caches)
WARMUP_ITEMS = 8


@dataclass
class Timing:
    """Seconds of every repeat of one LM: the whole simple_evaluate and the part inside ``loglikelihood``."""

    eval_s: list[float] = field(default_factory=list)
    model_s: list[float] = field(default_factory=list)


def _timed_loglikelihood(lm: Any, timing: Timing) -> None:
    """Wrap the instance's ``loglikelihood`` so each call adds its seconds to the current repeat."""
    inner = lm.loglikelihood

    def timed(requests: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(requests, *args, **kwargs)
        finally:
            timing.model_s[-1] += time.perf_counter() - t0

    lm.loglikelihood = timed


def per_request(raw: dict[str, Any]) -> dict[tuple[str, int, int], float]:
    """(task, doc id, request index) → log-likelihood, from lm-eval's logged samples."""
    out = {}
    for task, samples in raw["samples"].items():
        for sample in samples:
            for i, resp in enumerate(sample["resps"]):
                out[(task, int(sample["doc_id"]), i)] = float(resp[0][0])
    return out


def evaluate_once(lm: Any, tm: Any, limit: int) -> dict[str, Any]:
    """One lm-eval ``simple_evaluate`` of the task (logged samples, no bootstrap, quiet)."""
    import lm_eval

    from tor_exp.evaluation.runner import light_env_info, quiet_expected_notices, quiet_progress

    with light_env_info(), quiet_expected_notices(), quiet_progress(False):
        return lm_eval.simple_evaluate(model=lm, tasks=[TASK], limit=limit, task_manager=tm, log_samples=True,
                                       bootstrap_iters=0)


@dataclass
class Result:
    """One model's comparison: min seconds of each LM, the ratios ours / HFLM and the largest |Δ log-likelihood|."""

    model: str
    requests: int
    ours: Timing
    hflm: Timing
    max_abs_diff: float

    @property
    def eval_ratio(self) -> float:
        return min(self.ours.eval_s) / min(self.hflm.eval_s)

    @property
    def model_ratio(self) -> float:
        return min(self.ours.model_s) / min(self.hflm.model_s)

    def line(self) -> str:
        return (f"{self.model}: {self.requests} requests, {len(self.ours.eval_s)} repeats | simple_evaluate min "
                f"{min(self.ours.eval_s):.3f} s vs HFLM {min(self.hflm.eval_s):.3f} s = {self.eval_ratio:.3f}x | "
                f"inside loglikelihood {min(self.ours.model_s):.3f} s vs {min(self.hflm.model_s):.3f} s = "
                f"{self.model_ratio:.3f}x | max |dLL| {self.max_abs_diff:.2e}")


def model_config(name: str) -> Any:
    """The composed ``model=<name>`` config (a ConfigError with Hydra's one line for an unknown name)."""
    from tor_exp.config import compose, config_error_line
    from tor_exp.errors import ConfigError

    try:
        return compose([f"model={name}"]).model
    except ConfigError:
        raise
    except Exception as err:  # Hydra's MissingConfigException and friends
        raise ConfigError(config_error_line(err)) from err


def compare(model_name: str, limit: int, batch_size: int, repeats: int, tm: Any) -> Result:
    """Load ``model=<model_name>`` once; time both LMs on it, interleaved (who goes first alternates), ``repeats``
    times after a short warm-up of each; the first timed round gives the log-likelihoods to compare."""
    from lm_eval.models.huggingface import HFLM

    from tor_exp.evaluation.lm import TorExpLM
    from tor_exp.models import load_model

    model, tok = load_model(model_config(model_name))
    ours_t, hflm_t = Timing(), Timing()
    ours = TorExpLM(model=model, tokenizer=tok, batch_size=batch_size)
    hflm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, device="cpu")
    _timed_loglikelihood(ours, ours_t)
    _timed_loglikelihood(hflm, hflm_t)
    samples = {}
    for rnd in range(repeats + 1):  # round 0 warms both up on a few items (not recorded)
        for name, lm, timing in (("ours", ours, ours_t), ("hflm", hflm, hflm_t)) if rnd % 2 else \
                (("hflm", hflm, hflm_t), ("ours", ours, ours_t)):  # alternate who goes first
            timing.model_s.append(0.0)
            t0 = time.perf_counter()
            raw = evaluate_once(lm, tm, min(limit, WARMUP_ITEMS) if rnd == 0 else limit)
            timing.eval_s.append(time.perf_counter() - t0)
            if rnd == 1:  # the first timed round gives the log-likelihoods to compare
                samples[name] = per_request(raw)
    for timing in (ours_t, hflm_t):  # drop the warm-up round
        del timing.eval_s[0], timing.model_s[0]
    a, b = samples["ours"], samples["hflm"]
    if set(a) != set(b) or not a:
        raise RuntimeError(f"{model_name}: the two LMs logged different requests")
    diff = max(abs(a[k] - b[k]) for k in a)
    return Result(model_name, len(a), ours_t, hflm_t, diff)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python launchers/lm_overhead.py",
                                 description="tor_exp's lm-eval backend (reduction=none) vs lm-eval's HFLM")
    ap.add_argument("--models", nargs="+", default=["reference", "reference_hybrid"])
    ap.add_argument("--limit", type=int, default=200, help="items of reference_heldout_mc (default 200)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per LM after a warm-up (default 3)")
    ap.add_argument("--tol", type=float, default=1e-4, help="largest |Δ log-likelihood| allowed, nats")
    args = ap.parse_args(argv)
    for key in ("limit", "batch_size", "repeats"):
        if getattr(args, key) < 1:
            print(f"error: --{key.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    import torch

    from tor_exp.errors import ConfigError
    from tor_exp.evaluation.runner import task_manager

    try:
        for name in args.models:  # every name checked before the first (minutes-long) comparison
            model_config(name)
        tm = task_manager([TASK_FOLDER], [TASK])
        results = [compare(m, args.limit, args.batch_size, args.repeats, tm) for m in args.models]
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch_size}, {args.limit} items of {TASK}")
    for r in results:
        print(r.line())
    bad = [r.model for r in results if not r.max_abs_diff <= args.tol]
    if bad:
        print(f"log-likelihoods differ by more than {args.tol} nats: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

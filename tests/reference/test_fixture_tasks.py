"""Issue 16 fixes to the offline fixtures: piqa's length balance and lambada's per-byte metrics."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

TASKS = Path(__file__).resolve().parents[2] / "tor_exp" / "evaluation" / "tasks"


def _rows(task: str) -> list[dict]:
    return [json.loads(line) for line in (TASKS / f"{task}.jsonl").read_text().splitlines() if line.strip()]


def test_piqa_fixture_correct_solution_is_not_systematically_the_longer_one() -> None:
    """'Pick the longer solution' scored 27/30 before; now it must be a coin flip (and so must 'pick the shorter')."""
    rows = _rows("piqa_fixture")
    correct_longer = [len(r[f"sol{r['label'] + 1}"]) > len(r[f"sol{2 - r['label']}"]) for r in rows]
    correct_shorter = [len(r[f"sol{r['label'] + 1}"]) < len(r[f"sol{2 - r['label']}"]) for r in rows]
    n = len(rows)
    # within 1 of n/2: a 30-item fixture cannot be closer, and 27/30 (the old bias) is far outside
    assert abs(sum(correct_longer) - n / 2) <= 1, sum(correct_longer)
    assert abs(sum(correct_shorter) - n / 2) <= 1.5, sum(correct_shorter)
    # the labels stay balanced too, so 'always answer sol1' is also a coin flip
    assert abs(sum(r["label"] for r in rows) - n / 2) <= 3


def test_lambada_fixture_reports_per_byte_metrics() -> None:
    """byte_perplexity / bits_per_byte = Σ target NLL over Σ target bytes; perplexity and acc stay lm-eval's."""
    from tor_exp.evaluation.config import EvalConfig
    from tor_exp.evaluation.runner import evaluate
    from tor_exp.models import ModelConfig, load_model

    torch.set_num_threads(1)
    model, tok = load_model(ModelConfig(name="tiny", family="mamba2", source="tiny", tokenizer="byte", n_layer=16))
    out = evaluate(model, tok, EvalConfig(tasks=["lambada_fixture"], limit=3, compare_baseline=False),
                   reduction_label="none")
    lls, n_bytes = [], 0
    with torch.no_grad():
        for row in _rows("lambada_fixture")[:3]:
            words = row["text"].split(" ")
            ctx, target = tok(" ".join(words[:-1]))["input_ids"], tok(" " + words[-1])["input_ids"]
            logp = torch.log_softmax(model(torch.tensor([ctx + target])).logits[0, len(ctx) - 1:-1].double(), -1)
            lls.append(float(logp.gather(1, torch.tensor(target)[:, None]).sum()))
            n_bytes += len((" " + words[-1]).encode())
    m = out["metrics"]["lambada_fixture"]
    assert m["byte_perplexity"] == pytest.approx(math.exp(-sum(lls) / n_bytes), rel=1e-4)
    assert m["bits_per_byte"] == pytest.approx(-sum(lls) / n_bytes / math.log(2), rel=1e-4)
    assert m["perplexity"] == pytest.approx(math.exp(-sum(lls) / 3), rel=1e-3)  # per word, as lm-eval defines it
    assert 0.0 <= m["acc"] <= 1.0

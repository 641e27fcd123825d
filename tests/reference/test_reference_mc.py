"""reference_heldout_mc: schema, held-out provenance, length neutrality, doability (cheap scorer, shipped model)."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tor_exp.reference import ASSETS_DIR, GDN_DIR, HYBRID_DIR, TASK_DIR
from tor_exp.reference.data import split_of
from tor_exp.reference.make_task import MC_CTX_MAX, MC_CTX_MIN, sampled, shingle_hashes

ITEMS = [json.loads(line) for line in (TASK_DIR / "reference_heldout_mc.jsonl").read_text().splitlines()]
LABELS = np.array([it["label"] for it in ITEMS])
Z = 3.29  # two-sided 99.9 % normal quantile: a fixed-data test that fails only for a real effect


def chance_interval(n: int, p: float = 0.25) -> tuple[float, float]:
    """Normal-approximation binomial interval for the accuracy of a rule that is really at chance."""
    half = Z * math.sqrt(p * (1 - p) / n)
    return p - half, p + half


def accuracy(scores: np.ndarray, tie_rng: np.random.Generator | None = None) -> float:
    """Accuracy of argmax over [n, 4] scores; ties are broken at random (a tie is no evidence for any choice)."""
    if tie_rng is not None:
        scores = scores + tie_rng.uniform(0, 1e-9, size=scores.shape)
    return float((scores.argmax(1) == LABELS).mean())


# ---------------------------------------------------------------------------------------------------- schema
def test_mc_yaml_schema() -> None:
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(str(TASK_DIR / "reference_heldout_mc.yaml"), resolve_func=True)
    assert cfg["task"] == "reference_heldout_mc" and cfg["output_type"] == "multiple_choice"
    assert cfg["doc_to_text"] == "{{context}}" and cfg["doc_to_choice"] == "choices"
    assert cfg["doc_to_target"] == "label" and cfg["target_delimiter"] == ""
    assert {m["metric"]: m["aggregation"] for m in cfg["metric_list"]} == {"acc": "mean", "acc_norm": "mean"}
    rel = cfg["dataset_kwargs"]["data_files"]["test"]
    assert not Path(rel).is_absolute() and (TASK_DIR / rel).is_file()
    from tor_exp.config import compose

    ev = compose(["eval=reference"]).eval
    assert "reference_heldout_mc" in ev.tasks and ev.include_paths == ["pkg://tor_exp/reference/task"]


def test_mc_items_schema() -> None:
    assert len(ITEMS) >= 1000 and [it["id"] for it in ITEMS] == list(range(len(ITEMS)))
    for it in ITEMS:
        assert set(it) == {"id", "doc_id", "context", "choices", "choice_doc_ids", "label"}
        ctx, choices = it["context"], it["choices"]
        assert MC_CTX_MIN <= len(ctx.encode()) <= MC_CTX_MAX and ctx == ctx.strip()
        assert len(choices) == len(it["choice_doc_ids"]) == 4 and it["label"] in range(4)
        words = [c[1:] for c in choices]
        assert all(c.startswith(" ") and w.isalpha() and w.isascii() for c, w in zip(choices, words))
        assert len({w.lower() for w in words}) == 4  # four different words, whatever the case
    assert len({(it["doc_id"], it["context"]) for it in ITEMS}) == len(ITEMS)


# ---------------------------------------------------------------------------------------------------- (a)
def test_mc_items_come_from_heldout_documents_only() -> None:
    train_fp = np.load(ASSETS_DIR / "train_shingles.npy")
    snippet = ("If you do much work on computers, eventually you find that there's some task you'd like to "
               "automate. For example, you may wish to perform a search-and-replace over a large number of text "
               "files, or rename and rearrange a bunch of photo files in a complicated way.")  # training split
    assert np.isin(sampled(shingle_hashes(snippet)), train_fp).any()  # positive control: the fingerprint works
    docs = {d for it in ITEMS for d in it["choice_doc_ids"]}
    assert all(split_of(d) == "heldout" for d in docs)
    hashes, owner = [], []
    for it in ITEMS:
        assert it["choice_doc_ids"][it["label"]] == it["doc_id"]
        assert sum(d == it["doc_id"] for d in it["choice_doc_ids"]) == 1, it["id"]  # distractors: other documents
        h = sampled(shingle_hashes(it["context"] + it["choices"][it["label"]]))
        assert h.size > 0, it["id"]  # every item is actually checked
        hashes.append(h)
        owner += [it["id"]] * h.size
    hit = np.isin(np.concatenate(hashes), train_fp)
    assert not hit.any(), f"items {sorted(set(np.array(owner)[hit]))} overlap the training split"


# ---------------------------------------------------------------------------------------------------- (b)
def test_mc_length_gives_nothing_away() -> None:
    lengths = np.array([[len(c.encode()) for c in it["choices"]] for it in ITEMS])
    assert (lengths == lengths[:, :1]).all()  # by construction: the same byte length in every item
    lo, hi = chance_interval(len(ITEMS))
    rng = np.random.default_rng(0)
    for rule in (lengths, -lengths, -np.abs(lengths - lengths.mean(1, keepdims=True))):  # longest, shortest, typical
        assert lo <= accuracy(rule.astype(float), rng) <= hi
        assert lo <= accuracy(rule.astype(float)) <= hi  # ties to the first choice: the position is balanced too
    for k in range(4):
        assert lo <= float((LABELS == k).mean()) <= hi


# ---------------------------------------------------------------------------------------------------- (c)
def test_mc_cheap_independent_scorer_beats_chance() -> None:
    """A byte-bigram LM from the shipped training counts (add-one), scored in plain Python, is above chance: the
    true words are real running text, the task is doable. It sees only the context's last byte."""
    counts = np.load(ASSETS_DIR / "bigram_counts.npy").astype(np.int64)
    rows = counts.sum(1)
    scores = []
    for it in ITEMS:
        row = []
        for c in it["choices"]:
            b = [it["context"].encode()[-1]] + list(c.encode())
            row.append(sum(math.log((counts[p, n] + 1) / (rows[p] + counts.shape[0])) for p, n in zip(b, b[1:])))
        scores.append(row)
    acc = accuracy(np.array(scores))
    assert acc > chance_interval(len(ITEMS))[1], acc


# ---------------------------------------------------------------------------------------------------- (d)
# the Mamba-2, the Nemotron-H-style hybrid and the Gated DeltaNet hybrid reference
SHIPPED = {"reference": ASSETS_DIR, "reference_hybrid": HYBRID_DIR, "reference_gdn": GDN_DIR}


def _model_accuracy(limit: int | None, assets: Path = ASSETS_DIR) -> dict:
    from tor_exp.evaluation.config import EvalConfig
    from tor_exp.evaluation.runner import evaluate
    from tor_exp.reference.evaluate import load_shipped
    from tor_exp.reference.tokenizer import build_byte_tokenizer

    torch.set_num_threads(1)
    cfg = EvalConfig(tasks=["reference_heldout_mc"], include_paths=["pkg://tor_exp/reference/task"], limit=limit,
                     batch_size=8, compare_baseline=False)
    return evaluate(load_shipped(assets), build_byte_tokenizer(), cfg, reduction_label="none")["metrics"][
        "reference_heldout_mc"]


@pytest.mark.parametrize("which", list(SHIPPED))
def test_mc_shipped_model_is_well_above_chance_on_the_first_items(which: str) -> None:
    """The first 24 items through the real runner (about 25 s on one shared CPU thread)."""
    m = _model_accuracy(24, SHIPPED[which])
    assert m["acc"] == m["acc_norm"]  # equal-length choices
    assert m["acc"] >= 0.6, m
    assert m["acc"] - Z * math.sqrt(0.25 * 0.75 / 24) > 0.25


@pytest.mark.slow
@pytest.mark.parametrize("which", list(SHIPPED))
def test_mc_shipped_model_full_task(which: str) -> None:
    """All items (about 20 min on one CPU thread): >= 0.6, and the number recorded in metrics.json."""
    recorded = json.loads((SHIPPED[which] / "metrics.json").read_text())["reference_heldout_mc"]
    assert recorded["n_items"] == len(ITEMS)  # the shipped number is over every item
    m = _model_accuracy(None, SHIPPED[which])
    assert m["acc"] >= 0.6 and m["acc"] == pytest.approx(recorded["acc"], abs=1.5 / len(ITEMS))


# ---------------------------------------------------------------------------------------------------- builder
@pytest.mark.parametrize("distractors", ["type", "occurrence"])
def test_build_mc_on_a_synthetic_corpus(tmp_path, distractors) -> None:
    """Both distractor modes: equal-length words of other documents, none from a training-overlapping context,
    the same items for the same seed; 'type' never uses a word of the item's own document."""
    from tor_exp.reference.make_task import build_mc

    rng = random.Random(0)
    shared = ["river", "stone", "cloud", "apple"]  # in every document: never a 'type' distractor
    vocab = {f"d{k}": shared + ["".join(rng.choice("abcdefghij") for _ in range(rng.choice((5, 6))))
                                for _ in range(20)] for k in range(4)}
    docs = [{"id": k, "text": " ".join(rng.choice(vocab[k]) for _ in range(400)) + "."} for k in vocab]
    train = [{"id": "t", "text": docs[3]["text"]}]  # d3 is copied into training: no item may come from it
    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in train))
    items = build_mc(tmp_path, 60, seed=1, distractors=distractors, out=tmp_path / "a.jsonl")
    again = build_mc(tmp_path, 60, seed=1, distractors=distractors, out=tmp_path / "b.jsonl")
    assert items == again and (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert len(items) >= 30 and all(it["doc_id"] != "d3" for it in items)
    words = {d["id"]: set(d["text"].replace(".", "").split()) for d in docs}
    for it in items:
        choices = [c[1:] for c in it["choices"]]
        assert len({len(c) for c in choices}) == 1 and choices[it["label"]] in words[it["doc_id"]]
        assert it["context"].endswith(tuple(words[it["doc_id"]]))
        for k, (w, d) in enumerate(zip(choices, it["choice_doc_ids"])):
            if k != it["label"]:
                assert d != it["doc_id"] and w in words[d]
                if distractors == "type":
                    assert w not in words[it["doc_id"]]

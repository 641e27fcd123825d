"""Tests of the shipped reference model, its quality task, data preparation and training step."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tor_exp.reference import ASSETS_DIR, GDN_DIR, HYBRID_DIR, TASK_DIR
from tor_exp.reference.data import clean_rst, split_of
from tor_exp.reference.evaluate import ngram_logprobs, sequence_nll_per_byte
from tor_exp.reference.make_task import CONT_MAX, CONT_MIN, CTX_MAX, CTX_MIN, sampled, shingle_hashes
from tor_exp.reference.tokenizer import EOS_ID, build_byte_tokenizer
from tor_exp.reference.train import build_model, build_parser, lm_loss, lr_at, make_optimizer, model_config, train_step

ITEMS = [json.loads(line) for line in (TASK_DIR / "reference_heldout.jsonl").read_text().splitlines()]
# A paragraph of the *training* split (tutorial/appetite.rst, PSF licence): positive control for the fingerprint.
TRAIN_SNIPPET = ("If you do much work on computers, eventually you find that there's some task you'd like to "
                 "automate. For example, you may wish to perform a search-and-replace over a large number of text "
                 "files, or rename and rearrange a bunch of photo files in a complicated way.")


# The three shipped models: the Mamba-2 reference, the Nemotron-H-style hybrid and the Qwen3-Next-style Gated
# DeltaNet hybrid, each with its model config
SHIPPED = {"reference": ASSETS_DIR, "reference_hybrid": HYBRID_DIR, "reference_gdn": GDN_DIR}
#: each shipped model's depth (layers or blocks)
DEPTH = {"reference": 24, "reference_hybrid": 24, "reference_gdn": 16}


@pytest.fixture(scope="module", params=list(SHIPPED))
def which(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def metrics(which: str) -> dict:
    return json.loads((SHIPPED[which] / "metrics.json").read_text())


@pytest.fixture(scope="module")
def shipped(which: str):
    """The shipped model through the public loader and its model config (fp16 files -> fp32)."""
    from tor_exp.config import compose
    from tor_exp.models.loading import load_model

    torch.set_num_threads(1)
    model, tok = load_model(compose([f"model={which}"]).model)
    return model, tok


# ---------------------------------------------------------------------------------------------------- task
def test_task_yaml_schema() -> None:
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(str(TASK_DIR / "reference_heldout.yaml"), resolve_func=True)
    assert cfg["task"] == "reference_heldout" and cfg["output_type"] == "loglikelihood"
    assert callable(cfg["process_results"])
    assert cfg["doc_to_text"] == "{{context}}" and cfg["doc_to_target"] == "{{continuation}}"
    assert {m["metric"]: m["aggregation"] for m in cfg["metric_list"]} == {
        "byte_perplexity": "weighted_perplexity", "bits_per_byte": "bits_per_byte", "acc": "mean"}
    rel = cfg["dataset_kwargs"]["data_files"]["test"]
    assert not Path(rel).is_absolute() and (TASK_DIR / rel).is_file()
    from tor_exp.config import compose

    ev = compose(["eval=reference"]).eval
    assert ev.tasks == ["reference_heldout", "reference_heldout_mc"] and ev.include_paths == ["pkg://tor_exp/reference/task"]


def test_task_items_schema() -> None:
    assert len(ITEMS) == 96 and [it["id"] for it in ITEMS] == list(range(96))
    for it in ITEMS:
        assert set(it) == {"id", "doc_id", "context", "continuation"}
        ctx, cont = it["context"], it["continuation"]
        assert CTX_MIN <= len(ctx) <= CTX_MAX and CONT_MIN <= len(cont) <= CONT_MAX
        assert cont.startswith(" ") and not cont.startswith("  ") and not ctx.endswith(" ")
        assert (ctx + cont).isascii()
    assert len({it["context"] for it in ITEMS}) == len(ITEMS)


def test_task_items_come_from_heldout_documents_only() -> None:
    assert all(split_of(it["doc_id"]) == "heldout" for it in ITEMS)
    assert split_of("tutorial/appetite.rst.txt") == "train"
    train_fp = np.load(ASSETS_DIR / "train_shingles.npy")
    # positive control: training text is found by the fingerprint
    assert np.isin(sampled(shingle_hashes(TRAIN_SNIPPET)), train_fp).any()
    for it in ITEMS:
        h = sampled(shingle_hashes(it["context"] + it["continuation"]))
        assert h.size > 0, it["id"]  # every item is actually checked
        assert not np.isin(h, train_fp).any(), f"item {it['id']} overlaps the training split"


# ---------------------------------------------------------------------------------------------------- model
def test_shipped_weights_are_small_fp16(which: str, metrics: dict) -> None:
    f = SHIPPED[which] / "model.safetensors"
    assert f.stat().st_size <= 15 * 2**20
    with safe_open(str(f), "pt") as sf:
        dtypes = {sf.get_slice(k).get_dtype() for k in sf.keys()}
    assert dtypes == {"F16"}
    cfg = json.loads((SHIPPED[which] / "config.json").read_text())
    depth = len(cfg["layers_block_type"]) if which == "reference_hybrid" else cfg["num_hidden_layers"]
    assert depth == DEPTH[which] and 3_900_000 < metrics["n_params"] < 4_600_000
    if which == "reference_hybrid":  # a real hybrid: Mamba-2, attention and MLP blocks
        assert cfg["model_type"] == "nemotron_h"
        assert set(cfg["layers_block_type"]) == {"linear_attention", "full_attention", "mlp"}
    if which == "reference_gdn":  # Gated DeltaNet : gated attention = 3 : 1, dense MLPs (no experts)
        assert cfg["model_type"] == "qwen3_next" and cfg["num_experts"] == 0
        assert cfg["layer_types"] == ["linear_attention"] * 3 + ["full_attention"] + \
            (["linear_attention"] * 3 + ["full_attention"]) * 3


def test_shipped_weights_reproduce_recorded_loss(which: str, shipped, metrics: dict) -> None:
    model, tok = shipped
    assert next(model.parameters()).dtype == torch.float32 and model.config.num_hidden_layers == DEPTH[which]
    ref = metrics["reference_items"]
    texts = [ITEMS[i]["context"] + ITEMS[i]["continuation"] for i in ref["ids"]]
    assert tok(texts[0])["input_ids"] == list(texts[0].encode())
    got = sequence_nll_per_byte(model, texts)
    np.testing.assert_allclose(got, ref["nll_per_byte"], atol=2e-3)


def test_model_beats_bigram_baseline(shipped, metrics: dict) -> None:
    model, _ = shipped
    held = metrics["heldout"]
    assert held["model"]["bits_per_byte"] < held["bigram_kn"]["bits_per_byte"] - 0.5
    assert held["bigram_kn"]["bits_per_byte"] < held["unigram_add1"]["bits_per_byte"]
    # independently on task text: naive add-one bigram from the shipped training counts, scored in a loop
    counts = np.load(ASSETS_DIR / "bigram_counts.npy").astype(np.int64)
    texts = [it["context"] + it["continuation"] for it in ITEMS[-6:]]
    nll_bigram = []
    for t in texts:
        b = list(t.encode())
        nll_bigram.append(-sum(math.log((counts[p, n] + 1) / (counts[p].sum() + counts.shape[0]))
                               for p, n in zip(b[:-1], b[1:])) / (len(b) - 1))
    nll_model = sequence_nll_per_byte(model, texts)
    assert np.mean(nll_model) < np.mean(nll_bigram) - 0.3


# ---------------------------------------------------------------------------------------------------- pieces
def test_ngram_tables_are_distributions() -> None:
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 5, size=(258, 258))
    counts[3] = 0  # an unseen context falls back to the continuation distribution
    for name, table in ngram_logprobs(counts).items():
        np.testing.assert_allclose(np.exp(table).sum(1), 1.0, atol=1e-9, err_msg=name)
    # add-one bigram by hand for one cell
    t = ngram_logprobs(counts)["bigram_add1"]
    assert math.isclose(math.exp(t[5, 7]), (counts[5, 7] + 1) / (counts[5].sum() + 258))


def test_tokenizer_is_bytes() -> None:
    tok = build_byte_tokenizer()
    s = "naïve café, 3 < 4\n"
    assert tok(s)["input_ids"] == list(s.encode()) and tok.decode(tok(s)["input_ids"]) == s
    assert tok.eos_token_id == EOS_ID == 256 and tok.pad_token_id == 257


def test_clean_rst_keeps_prose_drops_code() -> None:
    src = """Title
=====

The :func:`sorted` function returns a :class:`~collections.abc.Sequence` built from ``items``. For
example::

    >>> sorted([3, 1, 2])
    [1, 2, 3]

.. note::

   Sorting is stable, which means that equal keys keep their original order in the result.

.. code-block:: python

   x = 1 + 2 + 3 + 4 + 5 + 6 + 7 + 8 + 9 + 10 + 11 + 12 + 13 + 14

Read `the HOWTO <https://example.org/>`_ for *many* more details about sorting lists in Python.
"""
    out = clean_rst(src).split("\n\n")
    assert out == [
        "The sorted function returns a Sequence built from items. For example:",
        "Sorting is stable, which means that equal keys keep their original order in the result.",
        "Read the HOWTO for many more details about sorting lists in Python.",
    ]


def test_lr_schedule() -> None:
    args = build_parser().parse_args(["--data", "x", "--out", "y", "--steps", "100", "--warmup", "10",
                                      "--lr", "1e-3", "--min-lr-ratio", "0.1"])
    assert math.isclose(lr_at(0, args), 1e-4) and math.isclose(lr_at(9, args), 1e-3)
    assert math.isclose(lr_at(10, args), 1e-3) and math.isclose(lr_at(100, args), 1e-4)
    assert math.isclose(lr_at(55, args), 1e-3 * (0.1 + 0.9 * 0.5))
    assert math.isclose(lr_at(50, args, time_frac=1.0), 1e-4)


@pytest.mark.parametrize("arch", ["mamba2", "nemotron_h", "qwen3_next"])
def test_train_step_lowers_loss_on_toy_model(arch: str) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    args = build_parser().parse_args(["--data", "x", "--out", "y", "--arch", arch, "--d-model", "32",
                                      "--n-layer", "2", "--head-dim", "16", "--state-size", "16", "--chunk-size", "16",
                                      "--pattern", {"qwen3_next": "GGA"}.get(arch, "M*-M"), "--attn-heads", "2",
                                      "--attn-head-dim", "16", "--mlp-size", "64", "--linear-heads", "2",
                                      "--linear-key-dim", "8", "--linear-value-dim", "16", "--lr", "3e-3"])
    model = build_model(args)
    assert type(model).__name__ == {"mamba2": "Mamba2ForCausalLM", "nemotron_h": "NemotronHForCausalLM",
                                    "qwen3_next": "Qwen3NextForCausalLM"}[arch]
    assert model.config.vocab_size == 258
    if arch == "nemotron_h":  # the pattern sets the depth: Mamba-2, attention, MLP, Mamba-2
        assert model.config.layers_block_type == ["linear_attention", "full_attention", "mlp", "linear_attention"]
    if arch == "qwen3_next":  # two Gated DeltaNet layers, then gated attention; dense MLPs, no experts
        assert model.config.layer_types == ["linear_attention", "linear_attention", "full_attention"]
        assert all(type(layer.mlp).__name__ == "Qwen3NextMLP" for layer in model.model.layers)


def test_the_gdn_reference_architecture_has_the_size_of_the_shipped_ones() -> None:
    """The default Qwen3-Next-style reference (GGGA x 4, d 160, MLP 224): GDN : attention = 3 : 1, about 4 M
    parameters like the shipped Mamba-2 (4.07 M) and hybrid (4.25 M)."""
    args = build_parser().parse_args(["--data", "x", "--out", "y", "--arch", "qwen3_next", "--mlp-size", "224"])
    model = build_model(args)
    kinds = model.config.layer_types
    assert kinds.count("linear_attention") == 3 * kinds.count("full_attention") == 12
    assert 3.9e6 < sum(p.numel() for p in model.parameters()) < 4.6e6
    opt = make_optimizer(model, args)
    batch = torch.tensor([list(b"the cat sat on the mat. " * 2)[:33]] * 2)
    with torch.no_grad():
        before = float(lm_loss(model, batch))
    losses = [train_step(model, opt, batch, 3e-3, 1.0) for _ in range(15)]
    with torch.no_grad():
        after = float(lm_loss(model, batch))
    assert math.isclose(losses[0], before, rel_tol=1e-4)
    assert after < before - 1.0, (before, after)


def test_task_byte_perplexity_equals_a_manual_computation() -> None:
    """The lm-eval task's per-byte metrics = exp / log2 of Σ continuation NLL over Σ continuation bytes."""
    import math

    import torch

    from tor_exp.evaluation.config import EvalConfig
    from tor_exp.evaluation.runner import evaluate
    from tor_exp.models import ModelConfig, load_model

    model, tok = load_model(ModelConfig(name="tiny", family="mamba2", source="tiny", tokenizer="byte", n_layer=16))
    items = [json.loads(line) for line in (TASK_DIR / "reference_heldout.jsonl").read_text().splitlines()[:3]]
    out = evaluate(model, tok, EvalConfig(tasks=["reference_heldout"], include_paths=["pkg://tor_exp/reference/task"],
                                          limit=3, compare_baseline=False), reduction_label="none")
    nll, n_bytes = 0.0, 0
    with torch.no_grad():
        for item in items:
            ctx = tok(item["context"])["input_ids"]
            cont = tok(item["continuation"])["input_ids"]
            ids = torch.tensor([ctx + cont])
            logp = torch.log_softmax(model(ids).logits[0, len(ctx) - 1:-1].double(), dim=-1)
            nll -= float(logp.gather(1, torch.tensor(cont)[:, None]).sum())
            n_bytes += len(item["continuation"].encode("utf-8"))
    metrics = out["metrics"]["reference_heldout"]
    assert metrics["byte_perplexity"] == pytest.approx(math.exp(nll / n_bytes), rel=1e-4)
    assert metrics["bits_per_byte"] == pytest.approx(nll / n_bytes / math.log(2), rel=1e-4)


def test_merge_logs_numbers_a_warm_started_phase_after_the_earlier_one() -> None:
    from tor_exp.reference.evaluate import merge_logs

    first = [{"step": 10, "loss": 3.0, "elapsed_s": 5.0}, {"step": 550, "loss": 1.3, "elapsed_s": 99.0}]
    second = [{"step": 1, "loss": 1.4, "elapsed_s": 2.0}, {"step": 10, "loss": 1.2, "elapsed_s": 9.0}]
    merged = merge_logs(first, second, offset=553)
    assert [r["step"] for r in merged] == [10, 550, 554, 563]
    assert [r["phase"] for r in merged] == [1, 1, 2, 2] and merged[3]["phase_step"] == 10
    assert [r["loss"] for r in merged] == [3.0, 1.3, 1.4, 1.2] and merged[2]["elapsed_s"] == 2.0
    # a third phase continues from the merged log; without an offset the last logged step is used
    third = merge_logs(merged, [{"step": 5, "loss": 1.0, "elapsed_s": 1.0}])
    assert third[-1]["step"] == 568 and third[-1]["phase"] == 3 and third[:4] == merged
    assert merge_logs([], second) == second


def test_read_log_resumed_run_last_record_wins_and_stops_at_the_shipped_step(tmp_path) -> None:
    from tor_exp.reference.evaluate import read_log

    log = tmp_path / "train_log.jsonl"
    # a run killed at step 30 after its step-20 checkpoint, resumed from it, then stopped by hand after step 40
    recs = [(10, 2.0), (20, 1.9), (30, 1.8), (21, 1.7), (30, 1.6), (40, 1.5), (50, 1.4)]
    log.write_text("".join(json.dumps({"step": s, "loss": v}) + "\n" for s, v in recs))
    assert [(r["step"], r["loss"]) for r in read_log(log)] == [(10, 2.0), (20, 1.9), (21, 1.7), (30, 1.6), (40, 1.5),
                                                                (50, 1.4)]
    assert [r["step"] for r in read_log(log, until_step=40)] == [10, 20, 21, 30, 40]


def test_init_from_loads_every_weight(tmp_path) -> None:
    """--init-from copies all weights (tied lm_head included) and refuses a mismatched architecture."""
    from transformers import Mamba2ForCausalLM

    from tor_exp.reference.train import export, load_init

    torch.manual_seed(0)
    args = build_parser().parse_args(["--data", "x", "--out", "y", "--d-model", "32", "--n-layer", "2",
                                      "--head-dim", "16", "--state-size", "16", "--chunk-size", "16"])
    src = Mamba2ForCausalLM(model_config(args))
    export(src, tmp_path / "src")
    dst = Mamba2ForCausalLM(model_config(args))
    load_init(dst, tmp_path / "src")
    for (name, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        torch.testing.assert_close(b, a.half().float(), msg=name)  # export is fp16
    assert dst.lm_head.weight.data_ptr() == dst.backbone.embeddings.weight.data_ptr()
    args.n_layer = 3
    with pytest.raises(ValueError, match="missing"):
        load_init(Mamba2ForCausalLM(model_config(args)), tmp_path / "src")

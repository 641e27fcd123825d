"""The benchmark presets run end to end on a tiny random Mamba-2 on CPU and their rows are consistent.

No assertion is about how fast anything is: the rows must agree with the schedule (realised FLOPs from an
independent integer simulation of the keep counts), with each other (speed-up = t_none / t_method) and the
decode path must reproduce ``model.generate`` greedy.
"""
import math

import pytest
import torch

from tor_exp.bench import run_benchmark
from tor_exp.bench.config import BenchConfig
from tor_exp.models.static_decode import StaticDecoder, states_from_cache
from tor_exp.bench.overhead import ReduceTimer
from tor_exp.bench.variants import Variant, build_variants, forward_fn
from tor_exp.errors import ConfigError
from tor_exp.models import ModelConfig, TinyModelConfig, load_model, patch, unpatch
from tor_exp.reduction import registered_methods

N_LAYER = 6
LOCATIONS = [1, 3]


def tiny_cfg(family="mamba2"):
    return ModelConfig(name=f"tiny_{family}", family=family, n_layer=N_LAYER, locations=LOCATIONS,
                       tiny=TinyModelConfig(d_model=32, n_layer=N_LAYER, chunk_size=16, head_dim=16, state_size=8))


@pytest.fixture(scope="module")
def tiny():
    cfg = tiny_cfg()
    model, tok = load_model(cfg)
    return model, tok, cfg


def utrc_cfg(**kw):
    cls, _ = registered_methods()["utrc"]
    return cls(**kw)


def expected_proxy(n: int, rho: float, protected_last: bool = False) -> float:
    """Layer-average token reduction from integer keep counts: keep ceil(ρ·n) of the n reducible tokens
    (at most half removed) at every location; the protected last token is never reducible."""
    counts, cur = [], n
    for layer in range(N_LAYER):
        counts.append(cur)
        if layer in LOCATIONS:
            reducible = cur - (1 if protected_last else 0)
            r = min(reducible - math.ceil(rho * reducible - 1e-9), reducible // 2)
            cur -= r
    return 1.0 - sum(counts) / (N_LAYER * n)


def test_prefill_rows_consistent(tiny, tmp_path, monkeypatch):
    from tor_exp.bench.report import plot_png

    model, tok, cfg = tiny
    monkeypatch.chdir(tmp_path)
    bench = BenchConfig(kind="prefill", batch_sizes=[2], seq_lens=[40], flops_targets=[0.2, 0.3], warmup=0,
                        repeats=2)
    out = run_benchmark(model, tok, cfg, utrc_cfg(), bench, device="cpu")
    assert not list(tmp_path.iterdir())  # the bench package writes nothing (the job's folder does)
    rows = out["bench"]["rows"]
    assert [r["variant"] for r in rows] == ["none", "utrc@20%", "utrc@30%"]
    base = rows[0]
    assert base["realised_proxy"] == 0.0 and base["keep_ratio"] == 1.0
    for r in rows[1:]:
        assert r["realised_proxy"] == pytest.approx(expected_proxy(40, r["keep_ratio"]), abs=1e-12)
        # continuous schedule vs integer counts: within one token per location per layer
        assert abs(r["realised_proxy"] - r["target_flops"]) <= len(LOCATIONS) / 40
        assert r["speedup"] == pytest.approx(base["prefill_min_s"] / r["prefill_min_s"])
        assert r["ideal_speedup"] == pytest.approx(1 / (1 - r["realised_backbone"]))
        assert r["of_ideal"] == pytest.approx(r["speedup"] / r["ideal_speedup"])
        assert len(r["times_s"]) == 2 and r["prefill_min_s"] == min(r["times_s"])
    assert rows[2]["keep_ratio"] < rows[1]["keep_ratio"] < 1.0
    summary = out["bench_summary"]
    assert summary["prefill.f30.speedup"] == pytest.approx(rows[2]["speedup"])
    assert all(isinstance(v, float) for v in summary.values())
    assert len(plot_png("prefill", rows)) > 1000
    md = out["bench"]["markdown"]
    assert len(md.strip().splitlines()) == 5 and "utrc@30%" in md


def test_generate_rows_consistent(tiny):
    model, tok, cfg = tiny
    bench = BenchConfig(kind="generate", batch_sizes=[2], seq_lens=[33], flops_targets=[0.3], new_tokens=4,
                        warmup=0, repeats=1)
    out = run_benchmark(model, tok, cfg, utrc_cfg(), bench, device="cpu")
    rows = out["bench"]["rows"]
    assert out["bench"]["decode_path"] == "static"
    none, red = rows
    for r in rows:
        assert r["generated_shape"] == [2, 4]
        assert r["tokens_per_s"] > 0
        assert r["tokens_per_s"] == pytest.approx(2 * 4 / r["total_min_s"])
        assert r["total_min_s"] == pytest.approx(r["prefill_min_s"] + r["decode_min_s"])
        assert r["decode_ms_per_token"] == pytest.approx(1000 * r["decode_min_s"] / 3)
    # the last prompt token is protected during a generation prefill
    assert red["realised_proxy"] == pytest.approx(expected_proxy(33, red["keep_ratio"], protected_last=True))
    assert red["throughput_gain"] == pytest.approx(none["total_min_s"] / red["total_min_s"])
    p, d, f = none["prefill_min_s"], none["decode_min_s"], red["realised_backbone"]
    assert red["ideal_gain"] == pytest.approx((p + d) / (p * (1 - f) + d))


def test_memory_and_overhead_rows_on_cpu(tiny):
    model, tok, cfg = tiny
    mem = run_benchmark(model, tok, cfg, utrc_cfg(), BenchConfig(kind="memory", batch_sizes=[2], seq_lens=[32],
                        flops_targets=[0.3], warmup=0, plot=False), device="cpu")["bench"]["rows"]
    vocab = model.config.vocab_size
    by = {(r["logits"], r["variant"]): r for r in mem}
    assert by[("all", "none")]["logits_bytes"] == 2 * 32 * vocab * 4
    assert by[("last", "none")]["logits_bytes"] == 2 * 1 * vocab * 4
    # full logits shrink with the surviving tokens (rows right-padded to the longest survivor)
    assert by[("all", "utrc@30%")]["logits_bytes"] < by[("all", "none")]["logits_bytes"]
    assert by[("last", "utrc@30%")]["logits_saving"] == 0.0
    assert all(r["peak_allocated_bytes"] is None and r["nvml_peak_bytes"] is None for r in mem)

    over = run_benchmark(model, tok, cfg, utrc_cfg(), BenchConfig(kind="overhead", batch_sizes=[2], seq_lens=[32],
                         flops_targets=[0.2], warmup=1, repeats=2, plot=False), device="cpu")["bench"]["rows"]
    assert over[0]["reduce_calls"] == 0 and over[0]["overhead_share"] == 0.0
    assert over[1]["reduce_calls"] == len(LOCATIONS)
    assert 0.0 < over[1]["overhead_share"] < 1.0
    assert over[1]["reduce_median_s"] < over[1]["prefill_median_s"]


def test_reduce_timer_observes_the_patched_models_reductions(tiny):
    """The timer is an observer of the backbone loop: one call per location, time inside the reductions only."""
    from tor_exp.models.patching import observing, patch, reduced_forward, unpatch

    model, tok, cfg = tiny
    variant = build_variants(model, cfg, utrc_cfg(), BenchConfig(flops_targets=[0.3]), 32)[1]
    timer = ReduceTimer("cpu")
    patch(model, variant.method, variant.schedule)
    try:
        with observing(model, timer):
            reduced_forward(model, torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1)))
        reduced_forward(model, torch.randint(0, 256, (2, 32)))  # detached again: not counted
    finally:
        unpatch(model)
    assert timer.calls == len(variant.schedule.locations) and timer.total_s() > 0.0


@pytest.mark.parametrize("method", ["none", "utrc"])
def test_static_decode_equals_generate_greedy(tiny, method):
    """Reduced prefill + the static decode step (the CPU fallback of the CUDA graph) = patched model.generate."""
    model, tok, cfg = tiny
    ids = torch.randint(0, 256, (3, 37), generator=torch.Generator().manual_seed(3))
    variant = Variant("none", "none", 0.0)
    if method == "utrc":
        variant = build_variants(model, cfg, utrc_cfg(), BenchConfig(flops_targets=[0.3]), 37)[1]
        patch(model, variant.method, variant.schedule)
    try:
        with torch.no_grad():
            ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                 pad_token_id=0)[:, 37:]
            out = forward_fn(model, ids, variant, "last", with_cache=True)()
            if method == "utrc":
                assert int(out.counts[0, -1]) < 37  # the prefill really was reduced
            first = out.logits[:, -1].argmax(-1)
            states = states_from_cache(out.cache, N_LAYER)
            dec = StaticDecoder(model, states)
            dec.load(states, first)
            mine = torch.cat([first[:, None], dec.run(7)], dim=1)
    finally:
        unpatch(model)
    assert torch.equal(mine, ref)


@pytest.mark.parametrize("family", ["mamba2", "mamba"])
def test_static_step_logits_match_hf_decode(family):
    """The static step's logits equal HF's own cached decode step (Mamba-1 and Mamba-2)."""
    cfg = tiny_cfg(family)
    cfg.n_layer = cfg.tiny.n_layer = 3
    cfg.locations = [1]
    model, _ = load_model(cfg)
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(5))
    nxt = torch.tensor([7, 11])
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        cache = out.cache
        states = states_from_cache(cache, 3)
        dec = StaticDecoder(model, states)
        dec.load(states, nxt)
        dec.run(1)
        ref = model(input_ids=nxt[:, None], cache=cache, use_cache=True).logits[:, -1]
    torch.testing.assert_close(dec.logits.float(), ref, rtol=1e-4, atol=1e-5)
    # the decoder's buffers moved on, the prefill's states were not touched
    torch.testing.assert_close(dec.ssm[0], states_from_cache(cache, 3).ssm[0])


def test_bench_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"bench.memory_logits"):
        BenchConfig(memory_logits=["some"])
    with pytest.raises(ConfigError, match=r"bench.decode"):
        BenchConfig(decode="fast")
    with pytest.raises(ConfigError, match=r"bench.flops_targets"):
        BenchConfig(flops_targets=[1.0])


def test_non_hf_model_is_a_config_error():
    class MambaLMHeadModel(torch.nn.Module):  # the shape of mamba_ssm's model: backbone.embedding, no embeddings
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Module()
            self.backbone.embedding = torch.nn.Embedding(4, 2)

    with pytest.raises(ConfigError, match="model.backend=mamba_ssm"):
        run_benchmark(MambaLMHeadModel(), None, tiny_cfg(), utrc_cfg(), BenchConfig(), device="cpu")


def test_hf_and_static_decode_paths_agree(tiny):
    from tor_exp.bench.presets import _Decoders

    model, _, cfg = tiny
    ids = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(4))
    variant = build_variants(model, cfg, utrc_cfg(), BenchConfig(flops_targets=[0.2]), 30)[1]
    toks = {}
    with torch.no_grad():
        patch(model, variant.method, variant.schedule)
        try:
            for path in ("hf", "static"):
                out = forward_fn(model, ids, variant, "last", with_cache=True)()
                dec = _Decoders(model, BenchConfig(kind="generate", decode=path), torch.device("cpu"))
                assert dec.path() == path
                toks[path] = dec.decode(out, 6)
        finally:
            unpatch(model)
    assert toks["hf"].shape == (2, 7) and torch.equal(toks["hf"], toks["static"])


def test_aligned_variants_beside_plain_report_both_ideals(tiny, tmp_path):
    """bench.chunk_align=both: each target runs plain and chunk-aligned; the aligned rows keep whole 16-token
    chunks (padded figure = token figure) and every row has the token ideal and the chunk-padded ideal."""
    model, tok, cfg = tiny
    # 64 tokens, 6 layers, locations 1 and 3: keeping 48 then 32 tokens removes exactly 25 %
    bench = BenchConfig(kind="prefill", batch_sizes=[1], seq_lens=[64], flops_targets=[0.25], warmup=0, repeats=1,
                        chunk_align="both", plot=False)
    rows = run_benchmark(model, tok, cfg, utrc_cfg(), bench, device="cpu")["bench"]["rows"]
    assert [r["variant"] for r in rows] == ["none", "utrc@25%", "utrc@25%+align"]
    plain, aligned = rows[1], rows[2]
    assert aligned["chunk_align"] and aligned["keep_ratios"] == [0.75, 32 / 48]
    assert aligned["realised_backbone_padded"] == pytest.approx(aligned["realised_backbone"], abs=1e-12)
    assert aligned["realised_backbone"] == pytest.approx(0.25, abs=1e-12)
    assert plain["realised_backbone_padded"] < plain["realised_backbone"]  # 64·ρ stops mid-chunk
    for r in rows[1:]:
        assert r["of_ideal_padded"] == pytest.approx(r["speedup"] / r["ideal_speedup_padded"])
        assert r["ideal_speedup_tokens"] == pytest.approx(1 / (1 - r["realised_proxy"]))


def test_memory_rows_report_the_kv_cache_of_a_hybrid(compose):
    """bench=memory on a tiny Nemotron-H: the prefill's KV cache (attention layers after a reduction hold fewer
    tokens) shrinks with the target; a pure Mamba-2 has none."""
    cfg = compose("model=tiny_nemotron_h").model
    model, tok = load_model(cfg)
    bench = BenchConfig(kind="memory", batch_sizes=[2], seq_lens=[48], flops_targets=[0.1, 0.3], warmup=0,
                        memory_logits=["last"], plot=False)
    rows = run_benchmark(model, tok, cfg, utrc_cfg(), bench, device="cpu")["bench"]["rows"]
    kv = [r["kv_cache_bytes"] for r in rows]
    assert kv[0] > kv[1] > kv[2] > 0 and rows[2]["kv_cache_saving"] > rows[1]["kv_cache_saving"] > 0
    # the unreduced cache: 2 attention layers × K and V × batch × kv heads × length × head dim × 4 bytes
    shape = __import__("tor_exp.models", fromlist=["model_shape"]).model_shape(model)
    n_attention = sum("attention" in shape.kinds(l) for l in range(shape.n_layer))
    attention = next(p for l in range(shape.n_layer) for p in shape.parts(l) if p.kind == "attention")
    assert kv[0] == n_attention * 2 * 2 * attention.kv_heads * 48 * attention.head_dim * 4


@pytest.mark.parametrize("mode", ["aligned", "both"])
def test_no_aligned_row_when_no_aligned_lengths_fit(mode, caplog):
    """Chunk 256 at 64 tokens: no kept length can be a chunk multiple, so the plain schedule runs; its row is not
    named "+align" nor recorded ``chunk_align: true`` (`aligned`), and `both` does not show the same schedule twice;
    the run says once why."""
    cfg = ModelConfig(name="tiny_mamba2", family="mamba2", n_layer=N_LAYER, locations=LOCATIONS,
                      tiny=TinyModelConfig(d_model=32, n_layer=N_LAYER, chunk_size=256, head_dim=16, state_size=8))
    model, tok = load_model(cfg)
    bench = BenchConfig(kind="prefill", batch_sizes=[1], seq_lens=[64], flops_targets=[0.25], warmup=0, repeats=1,
                        chunk_align=mode, plot=False)
    with caplog.at_level("WARNING", logger="tor_exp.bench.runner"):
        out = run_benchmark(model, tok, cfg, utrc_cfg(), bench, device="cpu")["bench"]
    rows = out["rows"]
    assert [r["variant"] for r in rows] == ["none", "utrc@25%"]
    assert [r["chunk_align"] for r in rows] == [False, False] and "keep_ratios" not in rows[1]
    plain = build_variants(model, cfg, utrc_cfg(), BenchConfig(flops_targets=[0.25]), 64)[1]
    assert rows[1]["keep_ratio"] == plain.keep_ratio
    note = "no aligned lengths fit at N=64 (chunk 256)"
    assert out["notes"] == [f"{note}: target 25% " + ("has its plain row only" if mode == "both"
                                                       else "ran the plain schedule")]
    assert out["markdown"].count(note) == 1 and caplog.text.count(note) == 1

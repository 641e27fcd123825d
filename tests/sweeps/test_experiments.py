"""Every conf/experiment file composes and its sweep expands (Hydra's BasicSweeper) to the paper's grid."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tor_exp.config import compose_dict, config_dir, sweep_jobs, validate
from tor_exp.reporting.paper import canonical_model

CONF = Path(config_dir())
L64 = [12, 17, 22, 27, 32, 37, 42]
L48 = [10, 15, 20, 25, 30, 35]


def _grid(models, methods, flops=(0.1, 0.2, 0.3)):
    """Expected (model, method, target_flops) set: `none` once per model at 0 %."""
    out = set()
    for m in models:
        out.add((m, "none", 0.0))
        out |= {(m, meth, f) for meth in methods for f in flops}
    return out


EXPECTED = {
    "table1_mamba2": _grid(["mamba2_1.3b", "mamba2_2.7b"], ["pumer", "evit", "utrc"]),
    "table2_mamba": _grid(["mamba_1.4b", "mamba_2.8b"], ["pumer", "evit", "utrc"]),
    "parity": _grid(["mamba2_1.3b", "mamba2_2.7b"], ["pumer_official", "evit_official", "utrc_official"]),
    "table6_ltmp": _grid(["mamba2_2.7b"], ["ltmp", "utrc"]),
    "reference_quality": _grid(["reference"], ["utrc", "evit", "pumer", "ltmp", "utrc_official", "evit_official",
                                               "pumer_official"]),
    # the hybrid reference: paper-mode methods only (parity modes are refused on hybrids)
    "reference_quality_hybrid": _grid(["reference_hybrid"], ["utrc", "evit", "pumer", "ltmp"]),
    # the Gated DeltaNet reference: the same four paper-mode methods
    "reference_quality_gdn": _grid(["reference_gdn"], ["utrc", "evit", "pumer", "ltmp"]),
}
COUNTS = {"table1_mamba2": 20, "table2_mamba": 20, "parity": 20, "table3_metric": 8, "table4_locations": 6,
          "table5_design": 7, "table6_ltmp": 7, "smoke": 2, "reference_quality": 22,
          "reference_quality_hybrid": 13, "reference_quality_gdn": 13}


def expand(experiment: str, only: list[int] | None = None) -> list[tuple[list[str], object]]:
    """(job overrides, composed job config with its hydra node) for the jobs of the experiment's sweep.

    The sweep is expanded exactly as ``python -m tor_exp -m experiment=<name>`` expands it (tor_exp.config.sweep_jobs,
    Hydra's basic sweeper rule); ``only`` composes just those job indices (each compose takes ~0.5 s here) and
    returns ``(overrides, None)`` for the others.
    """
    jobs = sweep_jobs([f"experiment={experiment}"])
    return [(job, compose_dict(job, return_hydra_config=True)
             if only is None or i in only or i - len(jobs) in only else None) for i, job in enumerate(jobs)]


def test_every_experiment_file_is_covered():
    names = {p.stem for p in (CONF / "experiment").glob("*.yaml")}
    assert names == set(COUNTS)


def _cell_of(overrides: list[str]) -> tuple[str | None, str, float | None]:
    """(model override, method, FLOPs) read off a job's override strings (the sweep spec, before composing)."""
    model, method, flops = None, "<default>", None
    for o in overrides:
        key, _, value = o.partition("=")
        if key == "model":
            model = value
        if key == "+experiment/cell":
            for cell in value.strip("[]").split(","):
                if cell.startswith("f") and cell[1:].isdigit():
                    flops = int(cell[1:]) / 100
                elif not cell.startswith("design_"):
                    method = cell
    return model, method, 0.0 if method == "none" else flops


@pytest.mark.parametrize("experiment", sorted(COUNTS))
def test_sweep_spec_expands_to_the_expected_jobs(experiment):
    """Fast: one compose per experiment; job count, no duplicate jobs, and the (model, method, FLOPs) grid."""
    jobs = expand(experiment, only=[])
    assert len(jobs) == COUNTS[experiment]
    overrides = [tuple(sorted(ov)) for ov, _ in jobs]
    assert len(set(overrides)) == len(overrides)
    if experiment in EXPECTED:
        got = [_cell_of(ov) for ov, _ in jobs]
        if experiment in ("table6_ltmp", "reference_quality", "reference_quality_hybrid", "reference_quality_gdn"):
            model = {"table6_ltmp": "mamba2_2.7b", "reference_quality": "reference",
                     "reference_quality_gdn": "reference_gdn"}.get(experiment, "reference_hybrid")
            got = [(model, m, f) for _, m, f in got]
        assert len(set(got)) == len(got) and set(got) == EXPECTED[experiment]


@pytest.mark.parametrize("experiment", sorted(COUNTS))
def test_first_and_last_job_compose(experiment):
    """Fast: the first and last job of every sweep compose and validate (configs, cells, schedule)."""
    for ov, cfg in expand(experiment, only=[0, -1]):
        if cfg is not None:
            _check_job(experiment, cfg)


def _check_job(experiment: str, cfg) -> tuple:
    v = validate(cfg)  # type checks + schedule (locations inside the model, ρ solvable)
    # fixed: re-running resumes in place; both reference models share one sweep folder (subdir by model name), so
    # one report covers both architectures
    shared = "reference_quality" if experiment.startswith("reference_quality") else experiment
    assert cfg.hydra.sweep.dir == f"multirun/{shared}"
    assert cfg.logger.group == shared
    if experiment == "smoke":
        assert v.model.name == "tiny_mamba2" and v.eval.tasks == ["lambada_fixture"] and v.eval.limit <= 4
    elif experiment.startswith("reference_quality"):
        assert v.model.name == {"reference_quality": "reference",
                                "reference_quality_gdn": "reference_gdn"}.get(experiment, "reference_hybrid")
        assert "reference_heldout" in v.eval.tasks and v.eval.log_samples
        assert v.eval.compare_baseline is False and v.eval.limit is None
    else:
        assert v.eval.tasks == ["lambada_openai", "hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande"]
        assert v.eval.compare_baseline is False  # the 0 % row is its own job
    parity = experiment == "parity" or v.reduction.method.endswith("_official")  # parity.yaml sets offset for all
    assert v.eval.alignment == ("offset" if parity else "exact")
    from tor_exp.models.schedule import build_schedule

    locations = list(build_schedule(v.reduction, v.model).locations)
    model = canonical_model(v.model.name)  # config names use dashes: mamba2-2.7b
    if model in ("mamba2_2.7b", "mamba_2.8b") and experiment != "table4_locations":
        assert locations == L64
    elif model in ("mamba2_1.3b", "mamba_1.4b"):
        assert locations == L48
    elif model in ("reference", "reference_hybrid"):
        assert locations == [5, 8, 11, 14, 17]
    elif model == "reference_gdn":  # the same relative depths in 16 layers
        assert locations == [3, 5, 7, 9, 11]
    else:
        assert experiment in ("smoke", "table4_locations")
    flops = v.reduction.target_flops if v.reduction.keep_ratio is None else None
    return model, v.reduction.method, flops, v


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(COUNTS))
def test_every_job_composes_to_the_paper_grid(experiment):
    """Slow (~0.5 s per job): every job composes; the composed grid is the paper's."""
    t0 = time.perf_counter()
    jobs = expand(experiment)
    assert len(jobs) == COUNTS[experiment]
    cells, subdirs = [], set()
    for ov, cfg in jobs:
        cells.append(_check_job(experiment, cfg))
        subdirs.add(OmegaConf.select(cfg, "hydra.sweep.subdir"))
    assert len(subdirs) == len(jobs), "two jobs would share an output dir"
    if experiment in EXPECTED:
        got = [(m, meth, f) for m, meth, f, _ in cells]
        assert len(set(got)) == len(got) and set(got) == EXPECTED[experiment]
    if experiment == "table3_metric":
        assert {(m, v.reduction.metric) for m, _, _, v in cells} == {
            (m, k) for m in ("mamba2_2.7b", "mamba_2.8b") for k in ("clip", "unclipped", "l1", "l2")}
        assert all(meth == "utrc" and f == 0.2 for _, meth, f, _ in cells)
    if experiment == "table4_locations":
        got = sorted(tuple(v.reduction.locations) for *_, v in cells)
        assert got == sorted(tuple(range(s, s + 31, 5)) for s in (20, 18, 16, 14, 10, 12))
        assert all(m == "mamba2_2.7b" and meth == "utrc" and f == 0.2 for m, meth, f, _ in cells)
        assert {l[0] for l in got} == {20, 18, 16, 14, 10, 12}
    if experiment == "table5_design":
        got = {(v.reduction.hidden, v.reduction.q if v.reduction.hidden == "hybrid" else None,
                v.reduction.residual, v.reduction.residual_q if v.reduction.residual == "hybrid" else None)
               for *_, v in cells}
        assert got == {("merge", None, "merge", None), ("prune", None, "prune", None),
                       ("hybrid", 0.8, "hybrid", 0.2), ("hybrid", 0.2, "hybrid", 0.8), ("hybrid", 0.5, "hybrid", 0.5),
                       ("hybrid", 0.5, "prune", None), ("hybrid", 0.5, "merge", None)}
        assert all(m == "mamba2_2.7b" and meth == "utrc" and f == 0.3 for m, meth, f, _ in cells)
    print(f"{experiment}: {len(jobs)} jobs composed in {time.perf_counter() - t0:.1f}s")

"""Behaviour pins for refactors: fixed configs through the whole job give the recorded numbers.

The pins (``pinned_results.json``) were produced on 2026-11-30 (torch 2.13.0 CPU, transformers 5.24, lm-eval
0.4.13) by ``python tests/pinned/test_pinned_results.py --write`` on the commit that added this file, before the
architecture move of issue 13. A difference means a refactor changed what a job computes: re-pin only for an
intended behaviour change, and say why in the commit.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

PINS = Path(__file__).with_name("pinned_results.json")
# tiny random Mamba-2 (seeded, independent of the shipped reference weights), every fixture task, 4 docs each
BASE = ["model=tiny_mamba2", "eval=fixtures", "eval.limit=4", "eval.batch_size=4", "eval.compare_baseline=false",
        "device=cpu", "resume=false"]
CASES = {
    "none": ["reduction=none"],
    "utrc": ["reduction=utrc", "reduction.target_flops=0.2"],
    "evit": ["reduction=evit", "reduction.target_flops=0.2"],
    "pumer": ["reduction=pumer", "reduction.target_flops=0.2"],
    "ltmp": ["reduction=ltmp", "reduction.target_flops=0.2"],
    "utrc_q1_keep": ["reduction=utrc", "reduction.keep_ratio=0.7", "reduction.q=1.0"],
    "generate_utrc": ["task=generate", "reduction=utrc", "reduction.keep_ratio=0.6", "prompt=The history of",
                      "max_new_tokens=12"],
}


def _job(name: str, out: Path) -> dict:
    from tor_exp.config import compose_dict
    from tor_exp.run import run

    cfg = compose_dict(BASE + CASES[name])

    run(cfg, out_dir=out)
    results = json.loads((out / "results.json").read_text())
    keep = ("metrics", "flops_per_task", "keep_ratio", "locations", "continuation", "realised_flops_reduction")
    pinned = {k: results[k] for k in keep if k in results}
    # stderrs depend on lm-eval's bootstrap settings, not on what the model computes
    pinned["metrics"] = {task: {m: v for m, v in values.items() if not m.endswith("_stderr")}
                         for task, values in pinned.get("metrics", {}).items()}
    return pinned


def _close(got, want, path=""):
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for k in want:
            _close(got[k], want[k], f"{path}/{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            _close(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9), path
    else:
        assert got == want, path


@pytest.mark.parametrize("name", sorted(CASES))
def test_pinned_job(name, tmp_path):
    pins = json.loads(PINS.read_text())
    _close(_job(name, tmp_path), pins[name], name)


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    out = {}
    for case in CASES:
        with tempfile.TemporaryDirectory() as d:
            out[case] = _job(case, Path(d))
    PINS.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {PINS}")

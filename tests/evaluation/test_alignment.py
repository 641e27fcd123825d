"""eval.alignment=auto: offset for the parity methods, exact otherwise; exact with a parity method is refused in
one line (config validation, the CLI before anything is loaded, and the lm-eval backend)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tor_exp.config import compose_dict, validate
from tor_exp.errors import ConfigError
from tor_exp.evaluation.config import resolve_alignment
from tor_exp.evaluation.lm import TorExpLM
from tor_exp.models import Schedule, patch, unpatch
from tor_exp.reduction import build_method, registered_methods
from tor_exp.reduction.parity import UTRCParityConfig

PARITY = ["evit_official", "pumer_official", "utrc_official"]
PAPER = ["evit", "ltmp", "none", "pumer", "utrc"]


def _compose(overrides: list[str]):
    return compose_dict(overrides)


def test_every_registered_method_is_classified() -> None:
    assert sorted(registered_methods()) == sorted(PARITY + PAPER)


@pytest.mark.parametrize("method", PARITY)
def test_parity_methods_resolve_to_offset_and_refuse_exact(method: str) -> None:
    assert resolve_alignment("auto", method) == "offset"
    assert resolve_alignment("offset", method) == "offset"
    with pytest.raises(ConfigError) as err:
        resolve_alignment("exact", method)
    assert str(err.value) == (f"eval.alignment=exact: reduction={method} reduces scored tokens (released "
                              "behaviour); use eval.alignment=offset (or auto)")


@pytest.mark.parametrize("method", PAPER + [None])
def test_other_methods_resolve_to_exact_and_keep_an_explicit_choice(method) -> None:
    assert resolve_alignment("auto", method) == "exact"
    assert resolve_alignment("exact", method) == "exact"
    assert resolve_alignment("offset", method) == "offset"


def test_unknown_alignment_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"eval\.alignment='sideways'"):
        resolve_alignment("sideways", "utrc")


@pytest.mark.parametrize("method, expected", [("utrc_official", "offset"), ("evit_official", "offset"),
                                              ("pumer_official", "offset"), ("utrc", "exact"), ("none", "exact")])
def test_validation_resolves_auto_per_method(method: str, expected: str) -> None:
    cfg = _compose([f"reduction={method}"])
    assert cfg.eval.alignment == "auto"  # the default of every conf/eval file
    assert validate(cfg).eval.alignment == expected


@pytest.mark.parametrize("eval_file", ["fixtures", "offline", "reference", "smoke", "zero_shot"])
def test_every_eval_file_defaults_to_auto(eval_file: str) -> None:
    assert _compose([f"eval={eval_file}"]).eval.alignment == "auto"


def test_validation_refuses_exact_with_a_parity_method() -> None:
    with pytest.raises(ConfigError, match=r"eval\.alignment=exact: reduction=pumer_official"):
        validate(_compose(["reduction=pumer_official", "eval.alignment=exact"]))
    assert validate(_compose(["reduction=pumer_official", "eval.alignment=offset"])).eval.alignment == "offset"


def test_parity_experiment_still_composes_with_offset() -> None:
    v = validate(_compose(["experiment=parity", "model=mamba2_1.3b", "+experiment/cell=[utrc_official,f20]"]))
    assert (v.reduction.method, v.eval.alignment) == ("utrc_official", "offset")


def test_cli_exact_with_a_parity_method_is_one_line_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "tor_exp", "reduction=utrc_official", "eval.alignment=exact",
                           f"hydra.run.dir={tmp_path}"], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: eval.alignment=exact: reduction=utrc_official reduces scored tokens (released behaviour); "
        "use eval.alignment=offset (or auto)"]
    assert "Traceback" not in proc.stderr and not (tmp_path / "results.json").exists()


def test_backend_resolves_auto_against_the_patched_method(tiny) -> None:
    model, tok = tiny
    assert TorExpLM(model=model, tokenizer=tok).alignment == "exact"  # unpatched
    patch(model, build_method(UTRCParityConfig()), Schedule(locations=[0, 1], keep_ratio=0.9))
    try:
        assert TorExpLM(model=model, tokenizer=tok).alignment == "offset"
        assert TorExpLM(model=model, tokenizer=tok, alignment="offset").alignment == "offset"
        with pytest.raises(ConfigError, match=r"eval\.alignment=exact: reduction=utrc_official"):
            TorExpLM(model=model, tokenizer=tok, alignment="exact")
    finally:
        unpatch(model)

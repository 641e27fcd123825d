"""LTMP's calibration text (issue 29): a text too short for the thresholds, an empty file or a JSONL line without
``"text"`` is refused with one line naming the file (exit 2), never a traceback nor a silent 0 % reduction."""
from __future__ import annotations

import math
import sys

import pytest
import torch

from tor_exp.errors import ConfigError
from tor_exp.models.calibration import (
    MIN_SCHEDULED_REMOVALS,
    calibration_text,
    check_calibration_length,
    scheduled_removals,
)
from tor_exp.models.locations import Schedule


def removals_by_hand(n_tokens: int, rhos: list[float], seq_len: int = 128, max_sequences: int = 64) -> list[int]:
    """Independent reference: the windows calibrate() cuts, and per location r = n − ceil(ρn) ≤ ⌊n/2⌋, in integers."""
    if n_tokens >= seq_len:
        windows, n = min(max_sequences, (n_tokens - seq_len) // (seq_len // 2) + 1), seq_len
    else:
        windows, n = 1, n_tokens
    out = []
    for rho in rhos:
        r = min(n - math.ceil(rho * n - 1e-9), n // 2)
        out.append(windows * r)
        n -= r
    return out


@pytest.mark.parametrize("rho, n_loc", [(0.86, 4), (0.9083, 5), (0.5262, 4), (0.97, 2)])
def test_scheduled_removals_and_the_minimum_length_match_a_hand_count(rho, n_loc):
    lengths = [1, 2, 3, 50, 89, 127, 128, 191, 192, 300, 5000]
    got = scheduled_removals(torch.tensor(lengths), [rho] * n_loc).tolist()
    assert got == [removals_by_hand(n, [rho] * n_loc) for n in lengths]
    schedule = Schedule(locations=list(range(2, 2 + 3 * n_loc, 3)), keep_ratio=rho)
    with pytest.raises(ConfigError) as refused:
        check_calibration_length(3, schedule, "/data/hi.txt")
    line = str(refused.value)
    assert line.startswith("model.calibration_text='/data/hi.txt': too short to calibrate: 3 token(s), needs at "
                           "least ") and "\n" not in line
    need = int(line.split("needs at least ")[1].split()[0])
    # the smallest length at which every location is scheduled at least the minimum, by the hand count
    assert min(removals_by_hand(need, [rho] * n_loc)) >= MIN_SCHEDULED_REMOVALS
    assert all(min(removals_by_hand(n, [rho] * n_loc)) < MIN_SCHEDULED_REMOVALS for n in range(1, need))
    check_calibration_length(need, schedule, "/data/hi.txt")  # enough: no error
    check_calibration_length(3, Schedule(locations=[2, 5], keep_ratio=1.0), None)  # nothing scheduled: nothing to fit


def test_a_keep_ratio_no_text_can_calibrate_is_refused():
    with pytest.raises(ConfigError, match=r"cannot calibrate at keep ratio 0\.9990: even 4160 tokens"):
        check_calibration_length(10 ** 6, Schedule(locations=[3, 6], keep_ratio=0.999), None)


@pytest.mark.parametrize("name, content, needle", [
    ("empty.txt", "", "holds no text to calibrate on"),
    ("blank.jsonl", "\n  \n", "holds no text to calibrate on"),
    ("notext.jsonl", '{"text": "fine"}\n{"content": "x"}\n', 'line 2: needs a JSON object with a string "text"'),
    ("list.jsonl", '["text"]\n', 'line 1: needs a JSON object with a string "text"'),
    ("broken.jsonl", '{"text": "a"\n', "line 1: not JSON"),
], ids=["empty_txt", "blank_jsonl", "jsonl_without_text", "jsonl_not_an_object", "jsonl_broken"])
def test_bad_calibration_files_are_one_line_naming_the_file(name, content, needle, tmp_path):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError) as refused:
        calibration_text(str(path))
    assert str(refused.value).startswith(f"model.calibration_text={str(path)!r}: ") and needle in str(refused.value)
    assert "\n" not in str(refused.value)


def test_good_jsonl_joins_its_texts(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text('{"text": "one", "id": 1}\n\n{"text": "two"}\n')
    assert calibration_text(str(path)) == "one\n\ntwo"


@pytest.mark.parametrize("name, content, needle", [
    ("hi.txt", "hi", "too short to calibrate: "),
    ("empty.txt", "", "holds no text"),
    ("notext.jsonl", '{"content": "x"}\n', '"text" field'),
], ids=["too_short", "empty", "jsonl_without_text"])
def test_the_cli_ends_an_ltmp_run_on_bad_calibration_text_with_one_line(name, content, needle, tmp_path,
                                                                        monkeypatch, capsys):
    """`python -m tor_exp reduction=ltmp model.calibration_text=<file>`: exit 2, one `error:` line naming the file
    (before: a 20 % target realised 0.0 % with status complete; IndexError; KeyError), and no record."""
    from hydra.core.global_hydra import GlobalHydra

    import tor_exp.__main__ as entry

    path = tmp_path / name
    path.write_text(content)
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["tor_exp", "model=tiny_mamba2", "eval=smoke", "eval.limit=2", "device=cpu",
                                      "eval.compare_baseline=false", "reduction=ltmp", "reduction.target_flops=0.2",
                                      f"model.calibration_text={path}", f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as exited:
        entry.main()
    GlobalHydra.instance().clear()
    assert exited.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and str(path) in err[0] and needle in err[0], err
    assert not (tmp_path / "run" / "results.json").exists() or '"complete"' not in (
        tmp_path / "run" / "results.json").read_text()

"""constraints/cpu.txt (the README's install line) against pyproject.toml: every dependency pinned, within its bounds."""
from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, Version]:
    lines = (ROOT / "constraints" / "cpu.txt").read_text().splitlines()
    out = {}
    for line in lines:
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = Version(version)
    return out


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in ("slurm", "report", "dev"):
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return [r for r in reqs if canonicalize_name(r.name) != "tor-exp"]


def test_every_declared_dependency_is_pinned_within_its_bounds():
    pinned = pins()
    missing = [r.name for r in declared() if canonicalize_name(r.name) not in pinned]
    assert not missing, f"not pinned in constraints/cpu.txt: {missing} (run python constraints/generate.py)"
    outside = [f"{r} vs =={pinned[canonicalize_name(r.name)]}" for r in declared()
               if not r.specifier.contains(pinned[canonicalize_name(r.name)], prereleases=True)]
    assert not outside, f"pins outside pyproject's bounds: {outside}"


def test_pins_are_exact_and_unique():
    lines = [l for l in (ROOT / "constraints" / "cpu.txt").read_text().splitlines() if l and not l.startswith("#")]
    names = [canonicalize_name(l.partition("==")[0]) for l in lines]
    assert all("==" in l and "+" not in l for l in lines)
    assert len(names) == len(set(names)) and names == sorted(names)
    assert pins()["torch"] == Version("2.13.0")  # the CPU wheel of the machines the suite ran on

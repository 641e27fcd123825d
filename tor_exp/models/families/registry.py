"""The model families by name, without importing them (no torch, no transformers): what validating a config needs.

Each module of this package declares its families in a module-level literal ``FAMILY_INFO`` (a tuple of dicts
with the fields of :class:`FamilyInfo`), read here with :func:`ast.literal_eval` from the source, so a new family
is one new module and nothing here changes. The adapters themselves are imported only when a model is built
(:mod:`tor_exp.models.families`), and a test checks that every adapter agrees with its declaration.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Optional

#: the name of the declaration in a family module
DECLARATION = "FAMILY_INFO"


@dataclass(frozen=True)
class FamilyInfo:
    """What a family is, for config validation: ``name`` (``model.family``), the ``module`` of this package that
    holds its adapter, and its capabilities.

    ``hybrid``: it has attention layers (its FLOPs depend on the layer and the length, so solving ρ needs its
    shape); ``parity``: the parity-mode methods (the released code) run on it; ``backends``: the ``model.backend``
    values it runs on; ``mixer_heads``: its tiny model's SSM splits d_model·expand into heads of ``head_dim``
    (Mamba-2 style); ``selectable``: a ``model.family`` value (mamba_ssm's adapter is reached through
    ``model.backend`` instead); ``model_types``: the HF ``config.model_type`` values of its checkpoints."""

    name: str
    module: str
    hybrid: bool = False
    parity: bool = False
    backends: tuple[str, ...] = ("hf",)
    mixer_heads: bool = True
    selectable: bool = True
    model_types: tuple[str, ...] = ()


def _declarations(path: Path) -> list[dict]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == DECLARATION for t in node.targets):
            return list(ast.literal_eval(node.value))
    return []


@lru_cache(maxsize=1)
def declared_families() -> dict[str, FamilyInfo]:
    """{name: FamilyInfo} of every family module's declaration (including the non-selectable ones)."""
    known = {f.name for f in fields(FamilyInfo)}
    out: dict[str, FamilyInfo] = {}
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.name.startswith("_") or path.stem == "registry":
            continue
        for entry in _declarations(path):
            unknown = set(entry) - known
            if unknown:
                raise ValueError(f"{path.name}: {DECLARATION} has unknown keys {sorted(unknown)}")
            entry = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()}
            info = FamilyInfo(module=path.stem, **entry)
            if info.name in out:
                raise ValueError(f"{path.name}: family {info.name!r} declared twice")
            out[info.name] = info
    return out


def family_names() -> tuple[str, ...]:
    """The ``model.family`` values (without ``auto``), in declaration order."""
    return tuple(name for name, info in declared_families().items() if info.selectable)


def family_info(name: str) -> Optional[FamilyInfo]:
    """The declaration of family ``name`` (None for ``auto`` or an unknown name)."""
    return declared_families().get(name)

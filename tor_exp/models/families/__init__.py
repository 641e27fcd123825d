"""Every supported model family, each a :class:`~tor_exp.models.adapter.ModelAdapter` in a module of this package.

The registry is name-only and lazy: each module declares its families in ``FAMILY_INFO``
(:mod:`tor_exp.models.families.registry`, read without importing anything), and a family's module is imported when
its adapter is first asked for. :func:`adapter_of` finds a loaded model's adapter, :func:`adapter_for` a config's
(``model.family``), :func:`family_of_model_type` a checkpoint's (``config.json``'s ``model_type``). Importing this
package imports neither torch nor transformers.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from tor_exp.errors import ConfigError
from tor_exp.models.families.registry import declared_families, family_names

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from tor_exp.models.adapter import ModelAdapter
    from tor_exp.models.shape import ModelShape

_ADAPTERS: dict[str, "ModelAdapter"] = {}


def register_adapter(adapter: "ModelAdapter") -> "ModelAdapter":
    _ADAPTERS[adapter.family] = adapter
    return adapter


def _load(module: str) -> None:
    """Import a family module of this package and register the adapters it lists in ``ADAPTERS``."""
    for adapter in getattr(importlib.import_module(f"{__name__}.{module}"), "ADAPTERS", ()):
        if adapter.family not in _ADAPTERS:
            register_adapter(adapter)


_ALL: list["ModelAdapter"] = []


def _all_adapters() -> list["ModelAdapter"]:
    """Every declared family's adapter in declaration order (module by module; imports them all, once)."""
    if not _ALL:
        declared = declared_families()
        for module in dict.fromkeys(info.module for info in declared.values()):
            _load(module)
        _ALL.extend(_ADAPTERS[name] for name in declared if name in _ADAPTERS)
    return _ALL


def families() -> dict[str, "ModelAdapter"]:
    """Every declared family's adapter (imports every family module)."""
    return {adapter.family: adapter for adapter in _all_adapters()}


def adapter_for(family: str) -> "ModelAdapter":
    """The adapter of ``family`` (``model.family``; imports its module only)."""
    info = declared_families().get(family)
    if info is None:
        raise ConfigError(f"model.family={family!r}: must be one of {', '.join(sorted(declared_families()))}")
    if family not in _ADAPTERS:
        _load(info.module)
    return _ADAPTERS[family]


def family_of_model_type(model_type: str) -> str:
    """The family of a checkpoint's ``config.json`` ``model_type`` (from the declarations; nothing imported)."""
    for info in declared_families().values():
        if model_type in info.model_types:
            return info.name
    supported = sorted(t for info in declared_families().values() for t in info.model_types)
    raise ConfigError(f"model.path: config.json's model_type {model_type!r} is not a supported family "
                      f"(supported: {', '.join(supported)})")


def adapter_of(model: "nn.Module") -> "ModelAdapter":
    """The adapter of a loaded model (patched models included: they subclass the HF class)."""
    for adapter in _all_adapters():
        if adapter.matches(model):
            return adapter
    raise TypeError(f"{type(model).__name__}: not a model family tor_exp supports "
                    f"({', '.join(sorted(_ADAPTERS))})")


def model_shape(model: "nn.Module") -> "ModelShape":
    """The layer-part shape of a loaded model."""
    return adapter_of(model).shape(model)


__all__ = ["adapter_for", "adapter_of", "families", "family_names", "family_of_model_type", "model_shape",
           "register_adapter"]

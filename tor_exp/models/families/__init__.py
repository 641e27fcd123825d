"""Every supported model family, each a :class:`~tor_exp.models.adapter.ModelAdapter` registered here.

Importing the package registers them all; :func:`adapter_of` finds a loaded model's adapter, :func:`adapter_for` a
config's (``model.family``), :func:`family_of_model_type` a checkpoint's (``config.json``'s ``model_type``).
"""
from __future__ import annotations

from torch import nn

from tor_exp.errors import ConfigError
from tor_exp.models.adapter import ModelAdapter
from tor_exp.models.shape import ModelShape

_ADAPTERS: dict[str, ModelAdapter] = {}


def register_adapter(adapter: ModelAdapter) -> ModelAdapter:
    _ADAPTERS[adapter.family] = adapter
    return adapter


def families() -> dict[str, ModelAdapter]:
    return dict(_ADAPTERS)


def adapter_for(family: str) -> ModelAdapter:
    """The adapter registered for ``family`` (``model.family``)."""
    if family not in _ADAPTERS:
        raise ConfigError(f"model.family={family!r}: must be one of {', '.join(sorted(_ADAPTERS))}")
    return _ADAPTERS[family]


def family_of_model_type(model_type: str) -> str:
    """The family of a checkpoint's ``config.json`` ``model_type``."""
    for adapter in _ADAPTERS.values():
        if model_type in adapter.model_types:
            return adapter.family
    supported = sorted(t for a in _ADAPTERS.values() for t in a.model_types)
    raise ConfigError(f"model.path: config.json's model_type {model_type!r} is not a supported family "
                      f"(supported: {', '.join(supported)})")


def adapter_of(model: nn.Module) -> ModelAdapter:
    """The adapter of a loaded model (patched models included: they subclass the HF class)."""
    for adapter in _ADAPTERS.values():
        if adapter.matches(model):
            return adapter
    raise TypeError(f"{type(model).__name__}: not a model family tor_exp supports "
                    f"({', '.join(sorted(_ADAPTERS))})")


def model_shape(model: nn.Module) -> ModelShape:
    """The FLOP-model shape of a loaded model."""
    return adapter_of(model).shape(model)


def _register_all() -> None:
    """Import every module of this package; each lists its adapters in ``ADAPTERS`` (a new family = a new module)."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for adapter in getattr(module, "ADAPTERS", ()):
            register_adapter(adapter)


_register_all()

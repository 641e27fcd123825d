"""Composing tor_exp's config with Hydra outside and inside a running Hydra app (written against hydra-core 1.3.8).

Two internals are used: Hydra keeps one global instance (``GlobalHydra``), which a running app holds and
``initialize_config_dir`` refuses to replace, so it is saved, cleared and put back around a composition; and the
public :func:`hydra.compose` composes as a single run only, so a sweep's primary config (``-m``: sweep values
allowed) is composed through ``Hydra.compose_config`` with ``RunMode.MULTIRUN``, the call ``hydra.compose`` itself
makes with ``RunMode.RUN``.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

from omegaconf import DictConfig

#: the hydra-core release these internals were written against
WRITTEN_AGAINST = "1.3.8"
#: the internals used: module → names (tests/compat/test_hydra.py fails loudly when one disappears)
USED = {"hydra.core.global_hydra": ("GlobalHydra",), "hydra.types": ("RunMode",),
        "hydra._internal.hydra": ("Hydra",)}


@contextlib.contextmanager
def own_global_hydra() -> Iterator[None]:
    """A cleared global Hydra for the block; a running app's instance is put back afterwards."""
    from hydra.core.global_hydra import GlobalHydra

    saved = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        yield
    finally:
        # the instance is looked up again: Hydra's initialize_* contexts put back a copy of the singleton they
        # found, so the object seen before the block may no longer be the global one
        GlobalHydra.instance().clear()
        if saved is not None:
            GlobalHydra.instance().initialize(saved)


def compose_config(config_dir: str, overrides: Sequence[str], *, multirun: bool) -> DictConfig:
    """The primary config ``config.yaml`` of ``config_dir`` with ``overrides``, its ``hydra`` node included, as
    ``python -m <app> [-m] <overrides>`` composes it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    with own_global_hydra(), initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        if not multirun:
            return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
        hydra_app = GlobalHydra.instance().hydra
        assert hydra_app is not None
        return hydra_app.compose_config(config_name="config", overrides=list(overrides), from_shell=False,
                                        with_log_configuration=False, run_mode=RunMode.MULTIRUN)

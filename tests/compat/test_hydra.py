"""The Hydra internals tor_exp.compat.hydra uses exist (fails loudly on an upgrade that removes one), a
composition inside a running Hydra app leaves the app's global state as it was, and ``-m``'s composition takes
sweep values that a single run's refuses."""
from __future__ import annotations

import importlib

import pytest

from tor_exp.compat import hydra as compat_hydra
from tor_exp.config import config_dir, register_configs

register_configs()  # tor_exp's schemas in Hydra's ConfigStore, as every entry point has them


@pytest.mark.parametrize("module_name", sorted(compat_hydra.USED))
def test_used_hydra_symbols_exist(module_name):
    module = importlib.import_module(module_name)
    missing = [name for name in compat_hydra.USED[module_name] if getattr(module, name, None) is None]
    assert not missing, f"{module_name} lost {missing}: update tor_exp/compat/hydra.py"
    from hydra._internal.hydra import Hydra
    from hydra.types import RunMode

    assert callable(getattr(Hydra, "compose_config", None)) and RunMode.MULTIRUN


def test_a_running_apps_global_hydra_is_put_back():
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        running = GlobalHydra.instance().hydra
        cfg = compat_hydra.compose_config(config_dir(), ["model=tiny_mamba"], multirun=False)
        assert cfg.model.name == "tiny_mamba" and "hydra" in cfg
        assert GlobalHydra.instance().hydra is running
    assert not GlobalHydra.instance().is_initialized()


def test_multirun_composition_takes_sweep_values():
    sweep = ["reduction=utrc", "reduction.target_flops=0.1,0.3"]
    cfg = compat_hydra.compose_config(config_dir(), sweep, multirun=True)
    plain = compat_hydra.compose_config(config_dir(), ["reduction=utrc"], multirun=False)
    assert cfg.reduction.target_flops == plain.reduction.target_flops  # the primary config: sweep keys left out
    with pytest.raises(Exception, match="(?i)sweep"):
        compat_hydra.compose_config(config_dir(), sweep, multirun=False)

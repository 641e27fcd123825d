"""The name-only family registry: validating a config imports neither torch nor transformers, every family
module's declaration agrees with its adapter, and a new family module is found without any list to edit."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tor_exp.models.families.registry import declared_families, family_info, family_names


def test_validating_a_model_config_imports_no_transformers():
    code = textwrap.dedent("""
        import sys
        from tor_exp.models.config import ModelConfig
        from tor_exp.errors import ConfigError
        ModelConfig(name="m", family="jamba", source="tiny", n_layer=16)
        try:
            ModelConfig(name="m", family="jamba", source="mamba_ssm", path="x", backend="mamba_ssm")
        except ConfigError as err:
            assert str(err).startswith("model.backend=mamba_ssm:"), err
        else:
            raise AssertionError("jamba on mamba_ssm accepted")
        print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_declaration_agrees_with_its_adapter():
    from tor_exp.models.families import families

    adapters = families()
    assert set(adapters) == set(declared_families())
    for name, adapter in adapters.items():
        info = family_info(name)
        assert adapter.info is info and adapter.hybrid == info.hybrid, name
        if info.selectable:
            config_class = adapter.model_class().config_class
            assert config_class.model_type in info.model_types, name
    assert "mamba_ssm" not in family_names() and family_info("auto") is None


def test_a_declaration_is_read_from_the_source(tmp_path, monkeypatch):
    """A module's FAMILY_INFO literal is all the registry reads (here a copy of the package with one more
    module that would fail to import)."""
    import shutil

    from tor_exp.models.families import registry

    pkg = tmp_path / "families"
    shutil.copytree(registry.__file__.rsplit("/", 1)[0], pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "newkind.py").write_text('import not_a_module\nFAMILY_INFO = ({"name": "newkind", "hybrid": True, '
                                    '"model_types": ("nk",)},)\n')
    monkeypatch.setattr(registry, "__file__", str(pkg / "registry.py"))
    registry.declared_families.cache_clear()
    try:
        info = registry.family_info("newkind")
        assert info is not None and info.module == "newkind" and info.hybrid and info.model_types == ("nk",)
        assert "newkind" in registry.family_names()
    finally:
        monkeypatch.undo()
        registry.declared_families.cache_clear()
    with pytest.raises(ValueError, match="unknown keys"):
        (pkg / "bad.py").write_text('FAMILY_INFO = ({"name": "bad", "hybird": True},)\n')
        monkeypatch.setattr(registry, "__file__", str(pkg / "registry.py"))
        try:
            registry.declared_families()
        finally:
            monkeypatch.undo()
            registry.declared_families.cache_clear()

"""Shared test setup: one thread (2-core CI), offline hubs, W&B offline."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def compose():
    """``compose(*overrides) -> ValidatedConfig``: the config exactly as ``python -m tor_exp <overrides>`` builds
    it (``compose.dict(...)`` gives the unvalidated DictConfig, ``hydra=True`` with the ``hydra`` node)."""
    from tor_exp import config

    def _compose(*overrides: str):
        return config.compose(list(overrides))

    _compose.dict = lambda *overrides, hydra=False: config.compose_dict(list(overrides), return_hydra_config=hydra)
    return _compose

"""Random-weight models with a real checkpoint's shape, built directly on the target device.

Speed and memory do not depend on the weights, so the GPU benchmarks use the paper's model shapes with random
initialisation: no download, and no 10 GB fp32 model initialised on the CPU first. The shapes are the
published ``config.json`` files of the mamba_ssm-format checkpoints (vocabulary padded as mamba_ssm pads it).
"""
from __future__ import annotations

from typing import Any

import torch


#: config.json of the paper's checkpoints (public, mamba_ssm format), keyed by hub id.
KNOWN_MAMBA_SSM_CONFIGS: dict[str, dict[str, Any]] = {
    "state-spaces/mamba2-2.7b": {"d_model": 2560, "d_intermediate": 0, "n_layer": 64, "vocab_size": 50277,
                                 "ssm_cfg": {"layer": "Mamba2"}, "attn_layer_idx": [], "attn_cfg": {},
                                 "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
                                 "pad_vocab_size_multiple": 16, "tie_embeddings": True},
    "state-spaces/mamba2-1.3b": {"d_model": 2048, "d_intermediate": 0, "n_layer": 48, "vocab_size": 50277,
                                 "ssm_cfg": {"layer": "Mamba2"}, "rms_norm": True, "residual_in_fp32": True,
                                 "fused_add_norm": True, "pad_vocab_size_multiple": 16, "tie_embeddings": True},
    "state-spaces/mamba-2.8b": {"d_model": 2560, "n_layer": 64, "vocab_size": 50277, "ssm_cfg": {},
                                "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
                                "pad_vocab_size_multiple": 8},
    "state-spaces/mamba-1.4b": {"d_model": 2048, "n_layer": 48, "vocab_size": 50277, "ssm_cfg": {},
                                "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
                                "pad_vocab_size_multiple": 8},
}


def known_config(model_cfg: Any) -> Any:
    """The HF config of one of the paper's checkpoints named by its hub id (:data:`KNOWN_MAMBA_SSM_CONFIGS`; the
    ``-hf`` copies have the same shape), None for any other path."""
    from tor_exp.models.families.mamba_ssm import hf_config_from_mamba_ssm

    key = (model_cfg.path or "").removesuffix("-hf")
    if model_cfg.source == "tiny" or key not in KNOWN_MAMBA_SSM_CONFIGS:
        return None
    return hf_config_from_mamba_ssm(KNOWN_MAMBA_SSM_CONFIGS[key], model_cfg.family)


def random_model(config: Any, family: str, device: str | torch.device = "cuda",
                 dtype: torch.dtype = torch.float32, seed: int = 0) -> Any:
    """The family's causal LM of HF config ``config`` with weights drawn with ``seed`` (the model's own
    initialisation, as a tiny model draws it), built directly on ``device``, in eval mode.

    ``model.source=random`` jobs get it from :func:`tor_exp.models.loading.load_model`, which reads ``config``.
    """
    from tor_exp.models.families import adapter_for

    cls = adapter_for(family).model_class()
    torch.manual_seed(seed)
    with torch.device(device):
        model = cls(config)
    return model.to(dtype=dtype).eval()

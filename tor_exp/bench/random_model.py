"""Random-weight models with a real checkpoint's shape, built directly on the target device.

Speed and memory do not depend on the weights, so the GPU benchmarks use the paper's model shapes with random
initialisation: no download, and no 10 GB fp32 model initialised on the CPU first. The shapes are the
published ``config.json`` files of the mamba_ssm-format checkpoints (vocabulary padded as mamba_ssm pads it).
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch

from tor_exp.errors import ConfigError

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


def shape_config(model_cfg: Any) -> Any:
    """The HF config of ``model_cfg``'s architecture, without weights and without network access."""
    from tor_exp.models.loading import hf_config_from_mamba_ssm, resolve_path, tiny_hf_config

    if model_cfg.source == "tiny":
        return tiny_hf_config(model_cfg)
    path = resolve_path(model_cfg.path) if model_cfg.path else None
    key = (model_cfg.path or "").removesuffix("-hf")  # the HF-format copies have the same shape
    raw = KNOWN_MAMBA_SSM_CONFIGS.get(key)
    if raw is None and path and os.path.isfile(os.path.join(path, "config.json")):
        with open(os.path.join(path, "config.json")) as fh:
            raw = json.load(fh)
        if "d_model" not in raw:  # HF-format directory
            from transformers import AutoConfig

            return AutoConfig.from_pretrained(path)
    if raw is None:
        raise ConfigError(f"model.path={model_cfg.path!r}: shape unknown offline (known: "
                          f"{', '.join(sorted(KNOWN_MAMBA_SSM_CONFIGS))}, or a local directory with config.json)")
    return hf_config_from_mamba_ssm(raw, model_cfg.family)


def random_model(model_cfg: Any, device: str | torch.device = "cuda", dtype: str | None = None,
                 seed: int = 0) -> Any:
    """A HF Mamba / Mamba-2 causal LM of ``model_cfg``'s shape with random weights, in eval mode on ``device``."""
    from tor_exp.models.loading import MODEL_CLASSES

    config = shape_config(model_cfg)
    if config.num_hidden_layers != model_cfg.n_layer:
        raise ConfigError(f"model.n_layer={model_cfg.n_layer}: the shape has {config.num_hidden_layers} layers")
    _, cls = MODEL_CLASSES[model_cfg.family]
    torch.manual_seed(seed)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        dtype or model_cfg.dtype]
    with torch.device(device):
        model = cls(config)
    return model.to(dtype=torch_dtype).eval()

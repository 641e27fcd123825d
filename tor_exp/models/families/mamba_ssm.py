"""The mamba_ssm checkpoint format and ``model.backend: mamba_ssm``.

The ``state-spaces/mamba*`` checkpoints exist only in mamba_ssm's layout (``config.json`` with ``d_model`` /
``ssm_cfg`` + ``pytorch_model.bin``): :func:`hf_config_from_mamba_ssm` translates such a config for HF's classes,
so they load without the mamba_ssm package. With ``model.backend: mamba_ssm`` the model is mamba_ssm's own
``MambaLMHeadModel`` (fused GPU kernels), whose blocks already return the two streams METHOD.md talks about —
``(hidden, residual)`` with the add deferred to the next block — so :meth:`MambaSSMFamily.step` is the block call
itself. Its kernels take no padding mask: rows are right-padded after a reduction, which is harmless for the real
tokens (causality), but batches must not be left-padded. ``ssm_out`` is not reachable inside the fused kernels, so
methods that need it must use ``importance_source: mixer_out``.

UNTESTED ON THIS MACHINE: mamba_ssm needs CUDA and cannot be installed here. The module imports without
mamba_ssm; everything that needs it raises a ConfigError naming ``model.backend``.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn
from transformers import Mamba2Config, MambaConfig

from tor_exp.errors import ConfigError
from tor_exp.models.adapter import LayerInput, ModelAdapter, StepOutput
from tor_exp.models.shape import ModelShape
from tor_exp.paths import resolve_pkg_path

#: this module's families, read without importing it (tor_exp.models.families.registry)
FAMILY_INFO = ({"name": "mamba_ssm", "backends": ("mamba_ssm",), "selectable": False},)

# Defaults of mamba_ssm's Mamba / Mamba2 modules and MambaLMHeadModel, used for keys a config.json omits.
_SSM_DEFAULTS = {
    "mamba": {"d_state": 16, "d_conv": 4, "expand": 2, "dt_rank": "auto", "conv_bias": True, "bias": False,
              "dt_min": 0.001, "dt_max": 0.1, "dt_init_floor": 1e-4},
    "mamba2": {"d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64, "ngroups": 1, "chunk_size": 256,
               "conv_bias": True, "bias": False, "rmsnorm": True, "norm_before_gate": False, "D_has_hdim": False,
               "dt_min": 0.001, "dt_max": 0.1, "dt_init_floor": 1e-4, "dt_limit": (0.0, float("inf")),
               "d_ssm": None},
}



def hf_config_from_mamba_ssm(raw: dict[str, Any], family: str):
    """Translate a mamba_ssm ``config.json`` (``MambaConfig`` of mamba_ssm) into the HF config.

    The vocabulary is padded to ``pad_vocab_size_multiple`` exactly as ``MambaLMHeadModel`` does, because the
    stored embedding has the padded size.
    """
    ssm_cfg = dict(raw.get("ssm_cfg") or {})
    layer = ssm_cfg.pop("layer", "Mamba1")
    found = "mamba2" if layer == "Mamba2" else "mamba"
    if found != family:
        raise ConfigError(f"model.family={family!r}: the checkpoint's ssm_cfg.layer is {layer!r}")
    if raw.get("attn_layer_idx"):
        raise ConfigError("model.path: hybrid checkpoints with attention layers are not supported")
    if raw.get("d_intermediate", 0):
        raise ConfigError("model.path: checkpoints with MLP blocks (d_intermediate > 0) are not supported")
    if not raw.get("rms_norm", True):
        raise ConfigError("model.path: LayerNorm checkpoints (rms_norm: false) are not supported by HF Mamba")
    s = {**_SSM_DEFAULTS[family], **ssm_cfg}
    d_model, n_layer = int(raw["d_model"]), int(raw["n_layer"])
    vocab = int(raw.get("vocab_size", 50277))
    multiple = int(raw.get("pad_vocab_size_multiple", 8))
    if vocab % multiple:
        vocab += multiple - vocab % multiple
    common = dict(vocab_size=vocab, hidden_size=d_model, num_hidden_layers=n_layer, state_size=int(s["d_state"]),
                  expand=int(s["expand"]), conv_kernel=int(s["d_conv"]), use_bias=bool(s["bias"]),
                  use_conv_bias=bool(s["conv_bias"]), residual_in_fp32=bool(raw.get("residual_in_fp32", True)),
                  layer_norm_epsilon=float(raw.get("norm_epsilon", 1e-5)),
                  tie_word_embeddings=bool(raw.get("tie_embeddings", True)), time_step_min=float(s["dt_min"]),
                  time_step_max=float(s["dt_max"]), time_step_floor=float(s["dt_init_floor"]),
                  pad_token_id=0, bos_token_id=0, eos_token_id=0)
    if family == "mamba":
        rank = s["dt_rank"]
        return MambaConfig(**common, time_step_rank=math.ceil(d_model / 16) if rank == "auto" else int(rank),
                           use_associative_scan=False)
    inner = int(s["expand"]) * d_model
    if s["d_ssm"] not in (None, inner):
        raise ConfigError("model.path: mamba_ssm d_ssm != expand*d_model (partial SSM) is not supported by HF Mamba-2")
    if s["norm_before_gate"] or not s["rmsnorm"] or s["D_has_hdim"]:
        raise ConfigError("model.path: Mamba-2 variant (norm_before_gate / no rmsnorm / D_has_hdim) not supported")
    return Mamba2Config(**common, num_heads=inner // int(s["headdim"]), head_dim=int(s["headdim"]),
                        n_groups=int(s["ngroups"]), chunk_size=int(s["chunk_size"]),
                        time_step_limit=tuple(float(x) for x in s["dt_limit"]))


def hf_state_dict_from_mamba_ssm(state_dict: dict[str, torch.Tensor], tie: bool) -> dict[str, torch.Tensor]:
    """Rename mamba_ssm keys to HF keys. Mixer parameter names already agree; only the embedding differs."""
    out = {}
    for key, value in state_dict.items():
        key = key.replace("backbone.embedding.", "backbone.embeddings.")
        out[key] = value
    if "lm_head.weight" not in out:
        if not tie:
            raise ConfigError("model.path: checkpoint has no lm_head.weight and tie_embeddings is false")
        out["lm_head.weight"] = out["backbone.embeddings.weight"]
    return out


def mamba_ssm_available() -> bool:
    try:
        import mamba_ssm  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return False
    return True


def load_mamba_ssm_backend(cfg: Any, device: str | torch.device = "cuda"):
    """``MambaLMHeadModel.from_pretrained`` on a mamba_ssm-format checkpoint (hub id or directory)."""
    if not mamba_ssm_available():
        raise ConfigError("model.backend=mamba_ssm: the mamba_ssm package is not importable (it needs CUDA)")
    if cfg.source != "mamba_ssm":
        raise ConfigError(f"model.backend=mamba_ssm: needs model.source=mamba_ssm, got {cfg.source!r}")
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    model = MambaLMHeadModel.from_pretrained(resolve_pkg_path(cfg.path, "model.path"), device=str(device),
                                             dtype=cfg.torch_dtype)
    return model.eval()


class MambaSSMFamily(ModelAdapter):
    """mamba_ssm's ``MambaLMHeadModel`` (``model.backend: mamba_ssm``; GPU kernels, no padding mask)."""

    family = "mamba_ssm"
    two_streams = True
    hf_model = False

    def matches(self, model: nn.Module) -> bool:
        return type(model).__name__ == "MambaLMHeadModel" and hasattr(model, "backbone")

    def config_shape(self, config: Any) -> ModelShape:
        raw = {k: getattr(config, k) for k in ("d_model", "n_layer", "vocab_size", "ssm_cfg", "rms_norm",
                                                "residual_in_fp32", "pad_vocab_size_multiple", "tie_embeddings")
               if hasattr(config, k)}
        hf = hf_config_from_mamba_ssm(raw, "mamba2" if (raw.get("ssm_cfg") or {}).get("layer") == "Mamba2" else "mamba")
        from tor_exp.models.families.mamba import Mamba2Family, MambaFamily

        return (Mamba2Family() if hf.model_type == "mamba2" else MambaFamily()).config_shape(hf)

    def cache_has_state(self, cache: Any) -> bool:
        return False

    def embed(self, model: nn.Module, input_ids: Tensor) -> Tensor:
        return model.backbone.embedding(input_ids)

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        return model.backbone.layers

    def step(self, model: nn.Module, index: int, block: nn.Module, hidden: Tensor, residual: Optional[Tensor],
             inp: LayerInput) -> StepOutput:
        if inp.want_ssm:
            raise ConfigError("reduction.importance_source=ssm_out: not available with model.backend=mamba_ssm")
        if inp.cache is not None:
            raise ConfigError("model.backend=mamba_ssm: generation with a reduced prefill needs model.backend=hf")
        hidden, residual = block(hidden, residual)
        return StepOutput(hidden, residual)

    def final_norm(self, model: nn.Module, hidden: Tensor, residual: Optional[Tensor]) -> Tensor:
        norm = model.backbone.norm_f
        return norm((hidden if residual is None else hidden + residual).to(norm.weight.dtype))


ADAPTERS = (MambaSSMFamily(),)

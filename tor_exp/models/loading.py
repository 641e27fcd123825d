"""Load a Mamba / Mamba-2 causal LM and its tokenizer from any of the supported sources.

Everything ends up as a HF ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` in eval mode, so patching, evaluation
and generation see one model type. The ``state-spaces/mamba2-*`` checkpoints only exist in the original
``mamba_ssm`` layout (``config.json`` with ``d_model``/``ssm_cfg`` + ``pytorch_model.bin``); they are converted
here instead of requiring the mamba_ssm package.
"""
from __future__ import annotations

import json
import logging
import math
import os
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch
from torch import nn
from transformers import AutoTokenizer, Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

from tor_exp.errors import ConfigError
from tor_exp.paths import resolve_pkg_path
from tor_exp.models.config import ModelConfig
from tor_exp.models.tokenizer import byte_tokenizer

MODEL_CLASSES = {"mamba": (MambaConfig, MambaForCausalLM), "mamba2": (Mamba2Config, Mamba2ForCausalLM)}

# Defaults of mamba_ssm's Mamba / Mamba2 modules and MambaLMHeadModel, used for keys a config.json omits.
_SSM_DEFAULTS = {
    "mamba": {"d_state": 16, "d_conv": 4, "expand": 2, "dt_rank": "auto", "conv_bias": True, "bias": False,
              "dt_min": 0.001, "dt_max": 0.1, "dt_init_floor": 1e-4},
    "mamba2": {"d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64, "ngroups": 1, "chunk_size": 256,
               "conv_bias": True, "bias": False, "rmsnorm": True, "norm_before_gate": False, "D_has_hdim": False,
               "dt_min": 0.001, "dt_max": 0.1, "dt_init_floor": 1e-4, "dt_limit": (0.0, float("inf")),
               "d_ssm": None},
}


def resolve_path(path: str) -> str:
    """``pkg://<package>/<sub/path>`` → a directory inside the installed package; anything else unchanged."""
    return resolve_pkg_path(path, "model.path")


# ----------------------------------------------------------------------------------------------------- configs
def tiny_hf_config(cfg: ModelConfig):
    """The HF config of a random tiny model (``source: tiny``)."""
    t = cfg.tiny
    common = dict(vocab_size=t.vocab_size, hidden_size=t.d_model, state_size=t.state_size,
                  num_hidden_layers=t.n_layer, expand=t.expand, conv_kernel=t.conv_kernel,
                  pad_token_id=257 if t.vocab_size > 257 else 0, bos_token_id=256 if t.vocab_size > 256 else 0,
                  eos_token_id=256 if t.vocab_size > 256 else 0, use_cache=True)
    if cfg.family == "mamba":
        return MambaConfig(**common, use_associative_scan=False)
    return Mamba2Config(**common, num_heads=t.d_model * t.expand // t.head_dim, head_dim=t.head_dim,
                        n_groups=t.n_groups, chunk_size=t.chunk_size, tie_word_embeddings=True)


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


def _read_mamba_ssm(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """config.json + weights from a local directory or a hub repo (downloaded with huggingface_hub)."""
    if os.path.isdir(path):
        cfg_file = os.path.join(path, "config.json")
        weight_file = next((os.path.join(path, f) for f in ("model.safetensors", "pytorch_model.bin")
                            if os.path.exists(os.path.join(path, f))), None)
        if weight_file is None:
            raise ConfigError(f"model.path={path!r}: no pytorch_model.bin or model.safetensors in the directory")
    else:
        from huggingface_hub import hf_hub_download

        cfg_file = hf_hub_download(path, "config.json")
        weight_file = hf_hub_download(path, "pytorch_model.bin")
    with open(cfg_file) as fh:
        raw = json.load(fh)
    if weight_file.endswith(".safetensors"):
        from safetensors.torch import load_file

        weights = load_file(weight_file)
    else:
        weights = torch.load(weight_file, map_location="cpu", weights_only=True)
    return raw, weights


def load_mamba_ssm_checkpoint(path: str, family: str) -> nn.Module:
    """Build the HF model for a mamba_ssm-format checkpoint and load its converted weights (strict)."""
    raw, weights = _read_mamba_ssm(path)
    config = hf_config_from_mamba_ssm(raw, family)
    state = hf_state_dict_from_mamba_ssm(weights, config.tie_word_embeddings)
    _, model_cls = MODEL_CLASSES[family]
    with torch.device("meta"):
        model = model_cls(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ConfigError(f"model.path={path!r}: checkpoint mismatch, missing={missing[:4]} unexpected={unexpected[:4]}")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.backbone.embeddings.weight
    return model


# ----------------------------------------------------------------------------------------------------- public
def load_tokenizer(cfg: ModelConfig, path: str | None = None):
    name = cfg.tokenizer
    if cfg.source == "tiny" or name == "byte":
        return byte_tokenizer()
    name = resolve_path(name) if name else path
    tok = AutoTokenizer.from_pretrained(name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


class _KernelFallbackNote(logging.Filter):
    """transformers warns once per kernel function (about five lines) that the mamba_ssm / causal_conv1d kernels
    are missing; the first becomes one note, the rest are dropped."""

    said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "falling back to its reference PyTorch implementation" not in record.getMessage():
            return True
        if _KernelFallbackNote.said:
            return False
        _KernelFallbackNote.said = True
        record.msg, record.args = ("mamba_ssm / causal_conv1d kernels are not installed: the PyTorch reference "
                                   "implementations run instead (same results, slower)"), ()
        return True


def quiet_kernel_fallbacks() -> None:
    target = logging.getLogger("transformers.integrations.hub_kernels")
    if not any(isinstance(f, _KernelFallbackNote) for f in target.filters):
        target.addFilter(_KernelFallbackNote())


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (a TCP connect; a closed network fails in seconds, where the
    hub client would retry for half a minute before saying the file is not cached)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout_s).close()
    except OSError:
        return False
    return True


def check_available(path: str, first_file: str = "config.json") -> None:
    """A hub id must be in the local cache or the hub must be reachable: one line saying which, fast."""
    if os.path.isdir(path) or os.path.exists(path):
        return
    if "/" not in path or path.startswith((".", "/", "~")):
        raise ConfigError(f"model.path={path!r}: no such directory")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(path, first_file), str) or hub_reachable():
        return
    raise ConfigError(f"model.path={path!r}: not in the local Hugging Face cache and the hub is unreachable "
                      "(offline); download it where there is network (`huggingface-cli download "
                      f"{path}`) or set model.path to a local copy")


@contextmanager
def loading_errors(key: str, path: Optional[str]) -> Iterator[None]:
    """Whatever a damaged or missing checkpoint raises (empty folder, truncated safetensors, a config.json that is
    not JSON, a hub error) becomes one line naming ``key`` and what was wrong."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - every loader error is a bad model.path for the user
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(f"{key}={path!r}: cannot load it ({type(err).__name__}: {text[:200]})") from None


def load_model(cfg: ModelConfig, device: str | torch.device = "cpu"):
    """Return ``(model, tokenizer)``: a HF Mamba/Mamba-2 causal LM in eval mode on ``device`` in ``cfg.dtype``.

    With ``backend: mamba_ssm`` the model is mamba_ssm's ``MambaLMHeadModel`` instead (GPU only, see
    :mod:`tor_exp.models.mamba_ssm_backend`). A missing or damaged checkpoint is a one-line ConfigError.
    """
    quiet_kernel_fallbacks()
    path = resolve_path(cfg.path) if cfg.path else None
    if cfg.source != "tiny" and path is not None:
        check_available(path)
    with loading_errors("model.path", cfg.path):
        model = _load_weights(cfg, path, device)
    with loading_errors("model.tokenizer", cfg.tokenizer or cfg.path):
        return model, load_tokenizer(cfg, path)


def _load_weights(cfg: ModelConfig, path: Optional[str], device: str | torch.device) -> nn.Module:
    if cfg.backend == "mamba_ssm":
        from tor_exp.models.mamba_ssm_backend import load_mamba_ssm_backend

        return load_mamba_ssm_backend(cfg, device)
    config_cls, model_cls = MODEL_CLASSES[cfg.family]
    if cfg.source == "tiny":
        torch.manual_seed(cfg.seed)
        model = model_cls(tiny_hf_config(cfg))
    elif cfg.source == "mamba_ssm":
        model = load_mamba_ssm_checkpoint(path, cfg.family)
    else:  # hf / local: HF format
        if cfg.source == "local" and not os.path.isdir(path):
            raise ConfigError(f"model.path={cfg.path!r}: not a directory")
        model = model_cls.from_pretrained(path, dtype=cfg.torch_dtype)
    if model.config.num_hidden_layers != cfg.n_layer:
        raise ConfigError(
            f"model.n_layer={cfg.n_layer}: the checkpoint has {model.config.num_hidden_layers} layers"
        )
    return model.to(device=device, dtype=cfg.torch_dtype).eval()

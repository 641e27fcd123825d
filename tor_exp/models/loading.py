"""Load a causal LM of a supported family and its tokenizer from any of the supported sources, and read a
checkpoint's shape without its weights.

Everything ends up as the family's HF causal-LM class in eval mode (its adapter, :mod:`tor_exp.models.families`,
knows the class), so patching, evaluation and generation see one kind of model. The ``state-spaces/mamba2-*``
checkpoints only exist in the original ``mamba_ssm`` layout; they are converted here instead of requiring the
mamba_ssm package. A checkpoint whose weights do not cover the model exactly (missing or unexpected keys, another
layer count than its config.json says) is refused unless ``model.allow_partial``.
"""
from __future__ import annotations

import json
import logging
import os
import re
import weakref
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch
from torch import nn
from transformers import AutoTokenizer

from tor_exp.errors import ConfigError
from tor_exp.models.config import ModelConfig
from tor_exp.models.families import adapter_for, family_of_model_type
from tor_exp.models.families.mamba_ssm import hf_config_from_mamba_ssm, hf_state_dict_from_mamba_ssm
from tor_exp.models.shape import ModelShape
from tor_exp.models.tokenizer import byte_tokenizer
from tor_exp.paths import resolve_pkg_path

log = logging.getLogger(__name__)

def resolve_path(path: str) -> str:
    """``pkg://<package>/<sub/path>`` → a directory inside the installed package; anything else unchanged."""
    return resolve_pkg_path(path, "model.path")


# ----------------------------------------------------------------------------------------------------- configs
def tiny_hf_config(cfg: ModelConfig):
    """The HF config of a random tiny model (``source: tiny``): the byte vocabulary's special ids, the family's
    own keys from ``model.tiny``."""
    t = cfg.tiny
    vocab = dict(vocab_size=t.vocab_size, pad_token_id=257 if t.vocab_size > 257 else 0,
                 bos_token_id=256 if t.vocab_size > 256 else 0, eos_token_id=256 if t.vocab_size > 256 else 0)
    return adapter_for(cfg.family).tiny_config(t, vocab)


def _config_file(path: str) -> Optional[str]:
    """config.json of a local directory, or of a hub id already in the local HF cache (never downloads)."""
    cfg_file = os.path.join(path, "config.json")
    if os.path.isfile(cfg_file):
        return cfg_file
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, "config.json")
    except Exception:  # noqa: BLE001 - an unusable id simply means "unknown"
        cached = None
    return cached if isinstance(cached, str) else None


def checkpoint_config(cfg: ModelConfig) -> Optional[Any]:
    """The HF config of ``cfg``'s model without its weights and without network access (None when unknown):
    tiny configs, local directories, hub ids whose config.json is in the local cache; mamba_ssm layouts are
    translated; ``source: random`` also knows the paper's checkpoints by their hub id
    (:data:`~tor_exp.models.random_model.KNOWN_MAMBA_SSM_CONFIGS`)."""
    if cfg.source == "tiny":
        return tiny_hf_config(cfg)
    if cfg.source == "random":
        from tor_exp.models.random_model import known_config

        known = known_config(cfg)
        if known is not None:
            return known
    path = resolve_path(cfg.path) if cfg.path else None
    cfg_file = _config_file(path) if path else None
    if cfg_file is None:
        return None
    with loading_errors("model.path", cfg.path):
        with open(cfg_file) as fh:
            raw = json.load(fh)
        if "d_model" in raw:  # mamba_ssm layout
            return hf_config_from_mamba_ssm(raw, cfg.family)
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(os.path.dirname(cfg_file))


def resolve_family(cfg: ModelConfig, config: Any = None) -> str:
    """``model.family``, or with ``family: auto`` the family of the checkpoint's ``model_type``."""
    if cfg.family != "auto":
        return cfg.family
    config = config if config is not None else checkpoint_config(cfg)
    if config is None:
        raise ConfigError(f"model.family=auto: no config.json found at model.path={cfg.path!r} to tell the family")
    from tor_exp.models.refusals import check_not_refused

    check_not_refused(model_type=config.model_type)
    return family_of_model_type(config.model_type)


def shape_from_model_config(cfg: ModelConfig) -> Optional[ModelShape]:
    """The model's FLOP shape without loading weights (see :func:`checkpoint_config`); None when unknown."""
    config = checkpoint_config(cfg)
    if config is None:
        return None
    return adapter_for(resolve_family(cfg, config)).config_shape(config)


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
    with torch.device("meta"):
        model = adapter_for(family).model_class()(config)
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
    """transformers warns once per kernel function (about five lines) that a kernel package is missing or does
    not run on the inputs' device; the first warning of each package becomes one note naming that package (only
    causal_conv1d may be missing while mamba_ssm runs), the rest are dropped. results.json's ``kernels`` says
    which kernel each part really ran (tor_exp.models.kernels)."""

    said: set[str] = set()
    _PACKAGE = re.compile(r"because `([^`]+)` is either not installed")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "falling back to its reference PyTorch implementation" not in message:
            return True
        found = self._PACKAGE.search(message)
        package = found.group(1) if found else "mamba_ssm / causal_conv1d"
        if package in _KernelFallbackNote.said:
            return False
        _KernelFallbackNote.said.add(package)
        record.msg, record.args = (f"{package} kernels are not in use (not installed, or not for this device): "
                                   "the PyTorch reference implementations run instead (same results, slower)"), ()
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
                      "(offline); download it where there is network (`hf download "
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
    """Return ``(model, tokenizer)``: the family's HF causal LM in eval mode on ``device`` in ``cfg.dtype``.

    With ``backend: mamba_ssm`` the model is mamba_ssm's ``MambaLMHeadModel`` instead (GPU only, see
    :mod:`tor_exp.models.families.mamba_ssm`). A missing or damaged checkpoint is a one-line ConfigError.
    """
    quiet_kernel_fallbacks()
    path = resolve_path(cfg.path) if cfg.path else None
    if cfg.source not in ("tiny", "random") and path is not None:  # random reads config.json only (or knows it)
        check_available(path)
    with loading_errors("model.path", cfg.path):
        model = _load_weights(cfg, path, device)
    with loading_errors("model.tokenizer", cfg.tokenizer or cfg.path):
        return model, load_tokenizer(cfg, path)


#: model → what ``model.allow_partial`` let through (missing / unexpected weight names), for the job's record
_PARTIAL: "weakref.WeakKeyDictionary[nn.Module, dict[str, list[str]]]" = weakref.WeakKeyDictionary()


def partial_weights(model: nn.Module) -> Optional[dict[str, list[str]]]:
    """The weights a ``model.allow_partial`` load did not find (``missing``, left at their random initialisation)
    or could not place (``unexpected``); None after an exact load."""
    return _PARTIAL.get(model)


_LAYER_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _weight_layers(names: list[str]) -> int:
    """Number of layers the weight names hold (1 + the largest ``layers.<i>.`` index; 0 if none)."""
    found = [int(m.group(1)) for m in map(_LAYER_KEY.search, names) if m]
    return max(found) + 1 if found else 0


def check_weights(cfg: ModelConfig, model: nn.Module, missing: list[str], unexpected: list[str],
                  n_config_layers: int) -> None:
    """Refuse weights that do not cover the model exactly; with ``model.allow_partial`` record what is off."""
    if not missing and not unexpected:
        return
    expected = [name for name, _ in model.named_parameters()]
    held = sorted((set(expected) - set(missing)) | set(unexpected))
    weight_layers = _weight_layers(held)
    if weight_layers and weight_layers != n_config_layers:
        what = f"the weights hold {weight_layers} layers, config.json says {n_config_layers}"
    else:
        what = (f"the weights do not cover the model: {len(missing)} missing ({', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''}), {len(unexpected)} unexpected ({', '.join(unexpected[:3])}"
                f"{', ...' if len(unexpected) > 3 else ''})")
    if not cfg.allow_partial:
        raise ConfigError(f"model.path={cfg.path!r}: {what}; model.allow_partial=true loads it anyway (missing "
                          "weights stay random and are listed in results.json)")
    log.warning("model.path=%r: %s; loaded anyway (model.allow_partial=true)", cfg.path, what)
    _PARTIAL[model] = {"missing": list(missing), "unexpected": list(unexpected), "problem": what}


def _load_weights(cfg: ModelConfig, path: Optional[str], device: str | torch.device) -> nn.Module:
    if cfg.backend == "mamba_ssm":
        from tor_exp.models.families.mamba_ssm import load_mamba_ssm_backend

        return load_mamba_ssm_backend(cfg, device)
    if cfg.source == "tiny":
        torch.manual_seed(cfg.seed)
        model = adapter_for(cfg.family).model_class()(tiny_hf_config(cfg))
    elif cfg.source == "random":  # the checkpoint's shape, weights drawn with model.seed: no weight file is read
        from tor_exp.models.random_model import KNOWN_MAMBA_SSM_CONFIGS, random_model

        config = checkpoint_config(cfg)
        if config is None:
            raise ConfigError(f"model.path={cfg.path!r}: shape unknown offline (model.source=random reads config.json "
                              f"of a local directory or of a hub id in the local cache, or knows "
                              f"{', '.join(sorted(KNOWN_MAMBA_SSM_CONFIGS))})")
        model = random_model(config, resolve_family(cfg, config), device, cfg.torch_dtype, seed=cfg.seed)
    elif cfg.source == "mamba_ssm":
        model = load_mamba_ssm_checkpoint(path, cfg.family)
    else:  # hf / local: HF format
        if cfg.source == "local" and not os.path.isdir(path):
            raise ConfigError(f"model.path={cfg.path!r}: not a directory")
        config = checkpoint_config(cfg)
        adapter = adapter_for(resolve_family(cfg, config))
        model, info = adapter.model_class().from_pretrained(path, dtype=cfg.torch_dtype, output_loading_info=True)
        n_config_layers = adapter.num_layers(model)
        check_weights(cfg, model, list(info.get("missing_keys") or []), list(info.get("unexpected_keys") or []),
                      n_config_layers)
    adapter = adapter_for(resolve_family(cfg, model.config)) if cfg.source != "tiny" else adapter_for(cfg.family)
    depth = adapter.num_layers(model)
    if cfg.n_layer is not None and depth != cfg.n_layer:
        raise ConfigError(f"model.n_layer={cfg.n_layer}: the checkpoint has {depth} layers")
    return model.to(device=device, dtype=cfg.torch_dtype).eval()

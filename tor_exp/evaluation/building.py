"""Build a patched model from config names, for lm-eval's ``model_args`` (``simple_evaluate(model="tor_exp")``).

The project's Hydra config is composed exactly as ``python -m tor_exp`` does (same conf dir, schemas and
validation), so ``model_args="model=tiny_mamba2,reduction=utrc,reduction.target_flops=0.3"`` means the same
model, method and schedule as the CLI overrides ``model=tiny_mamba2 reduction=utrc reduction.target_flops=0.3``.
"""
from __future__ import annotations

from typing import Any, Optional

from tor_exp.errors import ConfigError


def compose_config(model: str, reduction: Optional[str], overrides: dict[str, Any]):
    """Compose + validate the project config for a model/reduction choice and dotted overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tor_exp.__main__ import config_dir
    from tor_exp.config import register_configs, validate

    args = [f"model={model}"]
    if reduction is not None:
        args.append(f"reduction={reduction}")
    for key, value in overrides.items():
        if "." not in key:
            raise ConfigError(f"eval model_args: unknown key {key!r} (use model=, reduction= or dotted overrides; "
                              "list values contain commas, so pass model_args as a dict for those)")
        args.append(f"{key}={value}")
    register_configs()
    was_initialised = GlobalHydra.instance().is_initialized()
    if was_initialised:  # inside a Hydra job: compose in a private context, then leave the job's alone
        raise ConfigError("eval model_args: building by name inside a running Hydra job is not supported; "
                          "pass the loaded model instead")
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose(config_name="config", overrides=args)
    finally:
        GlobalHydra.instance().clear()
    return validate(cfg)


def build_patched_model(model: str, reduction: Optional[str], overrides: dict[str, Any],
                        device: Optional[str] = None):
    """(model, tokenizer, target FLOPs) with the reduction patched in (none: the plain model)."""
    from tor_exp.models import build_schedule, load_model, patch
    from tor_exp.reduction import build_method

    v = compose_config(model, reduction, overrides)
    dev = device or ("cuda" if _cuda() else "cpu")
    net, tokenizer = load_model(v.model, device=dev)
    schedule = build_schedule(v.reduction, v.model)
    target = None
    if v.reduction.method != "none":
        method = build_method(v.reduction)
        patch(net, method, schedule)
        if hasattr(method, "calibrating"):
            from tor_exp.run import calibrate_if_needed, calibration_text

            calibrate_if_needed(method, net, tokenizer, next(net.parameters()).device,
                                calibration_text(v.model.calibration_text))
        target = schedule.target_flops
    return net, tokenizer, target


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()

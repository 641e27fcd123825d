"""Models: one adapter per family (:mod:`tor_exp.models.families`), the one backbone loop, loading (HF,
mamba_ssm-format conversion, tiny, shipped reference), patching, the schedule, the FLOP model, generation with a
reduced prefill.

Names load lazily (PEP 562): the CLI imports ``tor_exp.models.config`` to validate overrides before anything
needs transformers.
"""
from tor_exp._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["ModelConfig", "TinyModelConfig"], "config"),
    **dict.fromkeys(["flops_reduction", "layer_flop_terms", "layer_flops", "model_flops",
                     "realised_flops_reduction"], "flops"),
    "ModelShape": "shape",
    **dict.fromkeys(["Schedule", "build_reduction", "build_schedule", "reducing", "resolve_locations",
                     "solve_keep_ratio"], "schedule"),
    **dict.fromkeys(["adapter_for", "adapter_of", "model_shape"], "families"),
    **dict.fromkeys(["decode_step", "generate_text", "prefill"], "generation"),
    **dict.fromkeys(["load_model", "load_tokenizer", "partial_weights", "resolve_path", "shape_from_model_config"],
                    "loading"),
    **dict.fromkeys(["ReducedOutput", "is_patched", "observing", "patch", "reduced_forward", "unpatch"], "patching"),
    **dict.fromkeys(["drive_backbone", "forward"], "backbone"),
    **dict.fromkeys(["gather_last", "protect_last"], "tokens"),
    **dict.fromkeys(["calibrate", "calibration_text"], "calibration"),
    "byte_tokenizer": "tokenizer",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)

"""Models: loading (HF, mamba_ssm-format conversion, tiny, shipped reference), patching, schedule + FLOPs,
generation with a reduced prefill.

Names load lazily (PEP 562): the CLI imports ``tor_exp.models.config`` to validate overrides before anything
needs transformers.
"""
from tor_exp._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["ModelConfig", "TinyModelConfig"], "config"),
    **dict.fromkeys(["ModelShape", "Schedule", "build_schedule", "flops_reduction", "layer_flop_terms", "layer_flops",
                     "model_flops", "realised_flops_reduction", "solve_keep_ratio"], "flops"),
    **dict.fromkeys(["decode_step", "generate_text", "prefill"], "generation"),
    **dict.fromkeys(["load_model", "load_tokenizer", "resolve_path"], "loading"),
    **dict.fromkeys(["ReducedOutput", "is_patched", "observing", "patch", "reduced_forward", "unpatch"], "patching"),
    "drive_backbone": "backbone",
    **dict.fromkeys(["gather_last", "protect_last"], "tokens"),
    **dict.fromkeys(["build_reduction", "calibrate", "calibration_text", "reducing"], "calibration"),
    "byte_tokenizer": "tokenizer",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)

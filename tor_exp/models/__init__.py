"""Models: loading (HF, mamba_ssm-format conversion, tiny, shipped reference), patching, schedule + FLOPs,
generation with a reduced prefill."""
from tor_exp.models.config import ModelConfig, TinyModelConfig
from tor_exp.models.flops import (
    ModelShape,
    Schedule,
    build_schedule,
    flops_reduction,
    layer_flop_terms,
    layer_flops,
    model_flops,
    realised_flops_reduction,
    solve_keep_ratio,
)
from tor_exp.models.generation import decode_step, generate_text, prefill
from tor_exp.models.loading import load_model, load_tokenizer, resolve_path
from tor_exp.models.patch import ReducedOutput, is_patched, patch, reduced_forward, unpatch
from tor_exp.models.tokenizer import byte_tokenizer

__all__ = [
    "ModelConfig", "TinyModelConfig", "ModelShape", "Schedule", "build_schedule", "flops_reduction",
    "layer_flop_terms", "layer_flops", "model_flops", "realised_flops_reduction", "solve_keep_ratio",
    "decode_step", "generate_text", "prefill", "load_model", "load_tokenizer", "resolve_path", "ReducedOutput",
    "is_patched", "patch", "reduced_forward", "unpatch", "byte_tokenizer",
]

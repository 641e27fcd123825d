"""qwen3_5_moe prune-only reference: the Qwen3.5 text stack is Qwen3-Next's (HF's own decoder layers, rotary module — one
[1, K] position tensor, which HF's multimodal rotary expands to the same position in all three components — and
causal mask; see ref_qwen3_next.py)."""
from __future__ import annotations

from ref_qwen3_next import prune_reference  # noqa: F401

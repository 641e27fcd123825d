"""The pure SSM families on HF transformers: Mamba, Mamba-2 and Falcon-Mamba (``model.backbone.layers``).

HF blocks return the single sum ``residual + mixer(norm(h))``; :meth:`MambaFamily.step` computes the same operations
but returns the two streams apart (METHOD.md §0), as mamba_ssm's ``Block`` does, so a reduction can treat each its
own way. It captures the SSM output y for methods that rank on it, and left-aligns padded rows before a mixer that
fills a cache, so every layer's conv window and SSM state are those of its real tokens. Decoding runs HF's own
forward: an SSM state has no positions, so a reduced prefill leaves nothing for the decode step to correct.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager, Optional, Sequence

import torch
from huggingface_hub.errors import StrictDataclassError
from torch import Tensor, nn
from transformers import (
    FalconMambaConfig,
    FalconMambaForCausalLM,
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
)

from tor_exp.errors import ConfigError
from tor_exp.models.adapter import LayerInput, ModelAdapter, StepOutput
from tor_exp.models.families.capture import capture_mamba1, capture_mamba2
from tor_exp.models.shape import Mamba1, Mamba2, ModelShape, Part
from tor_exp.models.tokens import gather_tokens, right_align_order

#: this module's families, read without importing it (tor_exp.models.families.registry)
FAMILY_INFO = (
    {"name": "mamba", "parity": True, "backends": ("hf", "mamba_ssm"), "mixer_heads": False,
     "model_types": ("mamba",)},
    {"name": "mamba2", "parity": True, "backends": ("hf", "mamba_ssm"), "model_types": ("mamba2",)},
    {"name": "falcon_mamba", "mixer_heads": False, "model_types": ("falcon_mamba",)},
)


class MambaFamily(ModelAdapter):
    """Mamba-1 blocks on ``model.backbone`` (HF ``MambaForCausalLM``)."""

    family = "mamba"
    two_streams = True
    static_decode = True

    def model_class(self) -> type:
        return MambaForCausalLM

    def config_class(self) -> type:
        return MambaConfig

    def tiny_config(self, tiny: Any, vocab: dict[str, int]) -> Any:
        return self.config_class()(
            **vocab, hidden_size=tiny.d_model, state_size=tiny.state_size, num_hidden_layers=tiny.n_layer,
            expand=tiny.expand, conv_kernel=tiny.conv_kernel, use_cache=True, use_associative_scan=False,
        )

    def mixer_part(self, config: Any) -> Part:
        """The mixer every layer holds."""
        return Mamba1(d_inner=int(config.expand) * config.hidden_size, state_size=config.state_size,
                      conv_kernel=config.conv_kernel, dt_rank=int(getattr(config, "time_step_rank", 0) or 0))

    def config_shape(self, config: Any) -> ModelShape:
        return ModelShape.repeated(config.hidden_size, config.num_hidden_layers, config.vocab_size,
                                   self.mixer_part(config))

    def embed(self, model: nn.Module, input_ids: Tensor) -> Tensor:
        return model.backbone.embeddings(input_ids)

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        return model.backbone.layers

    def step(self, model: nn.Module, index: int, block: nn.Module, hidden: Tensor, residual: Optional[Tensor],
             inp: LayerInput) -> StepOutput:
        """HF's ``residual (+fp32) + mixer(norm(h))`` with the add of the previous block deferred to here."""
        h = hidden if residual is None else residual + hidden
        residual = h.to(torch.float32) if block.residual_in_fp32 else h
        normed = block.norm(h.to(dtype=block.norm.weight.dtype))
        mask = None if inp.all_valid else inp.valid
        order = inverse = None
        if inp.cache is not None and mask is not None:
            order = right_align_order(inp.valid)
            inverse = torch.argsort(order, dim=1)
            normed, mask = gather_tokens(normed, order), torch.gather(inp.valid, 1, order)
        store: dict[str, Tensor] = {}
        with self.capture_ranking(block, store) if inp.want_ssm else nullcontext():
            out = block.mixer(normed, cache=inp.cache, attention_mask=mask)
        if order is not None:
            out = gather_tokens(out, inverse)
            store = {k: gather_tokens(v, inverse) for k, v in store.items()}
        return StepOutput(out, residual, store)

    def capture_ranking(self, block: nn.Module, store: dict[str, Tensor]) -> ContextManager[None]:
        return capture_mamba1(block.mixer, store)

    def final_norm(self, model: nn.Module, hidden: Tensor, residual: Optional[Tensor]) -> Tensor:
        return model.backbone.norm_f(hidden if residual is None else residual + hidden)


class Mamba2Family(MambaFamily):
    """Mamba-2 blocks on ``model.backbone`` (HF ``Mamba2ForCausalLM``)."""

    family = "mamba2"

    def model_class(self) -> type:
        return Mamba2ForCausalLM

    def config_class(self) -> type:
        return Mamba2Config

    def capture_ranking(self, block: nn.Module, store: dict[str, Tensor]) -> ContextManager[None]:
        return capture_mamba2(block.mixer, store)

    def mixer_part(self, config: Any) -> Part:
        inner = int(config.expand) * config.hidden_size
        return Mamba2(d_inner=inner, heads=inner // int(config.head_dim), head_dim=int(config.head_dim),
                      state_size=config.state_size, n_groups=int(config.n_groups), conv_kernel=config.conv_kernel,
                      chunk_size=int(config.chunk_size))

    def tiny_config(self, tiny: Any, vocab: dict[str, int]) -> Any:
        return Mamba2Config(
            **vocab, hidden_size=tiny.d_model, state_size=tiny.state_size, num_hidden_layers=tiny.n_layer,
            expand=tiny.expand, conv_kernel=tiny.conv_kernel, use_cache=True,
            num_heads=tiny.d_model * tiny.expand // tiny.head_dim, head_dim=tiny.head_dim, n_groups=tiny.n_groups,
            chunk_size=tiny.chunk_size, tie_word_embeddings=True,
        )


class FalconMambaFamily(MambaFamily):
    """Falcon-Mamba: Mamba-1 blocks whose mixer RMS-normalises B, C and dt (HF ``FalconMambaForCausalLM``)."""

    family = "falcon_mamba"
    static_decode = False  # its mixer normalises B, C and dt, which the static step does not

    def model_class(self) -> type:
        return FalconMambaForCausalLM

    def config_class(self) -> type:
        return FalconMambaConfig

    def tiny_config(self, tiny: Any, vocab: dict[str, int]) -> Any:
        """Mamba's tiny config plus ``model.tiny.config`` (Falcon-Mamba's own keys, e.g. ``mixer_rms_eps``)."""
        keys = dict(hidden_size=tiny.d_model, state_size=tiny.state_size, num_hidden_layers=tiny.n_layer,
                    expand=tiny.expand, conv_kernel=tiny.conv_kernel, use_cache=True, use_associative_scan=False)
        keys.update(tiny.config)
        try:
            return FalconMambaConfig(**vocab, **keys)
        except (StrictDataclassError, TypeError, ValueError) as err:  # HF's strict config checks
            why = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
            raise ConfigError(f"model.tiny.config={dict(tiny.config)}: not a valid Falcon-Mamba config ({why})") \
                from None


ADAPTERS = (MambaFamily(), Mamba2Family(), FalconMambaFamily())

"""The model adapter contract: everything tor_exp needs to know about one model family, in one object.

Nothing outside ``tor_exp/models`` names a HF class or a config field: callers ask
:func:`tor_exp.models.families.adapter_of` (or use what is built on it: ``model_shape``,
:func:`tor_exp.models.backbone.forward`). A new family fills in one :class:`ModelAdapter` subclass in
``tor_exp/models/families/`` and registers it (see docs/architecture.md, "Adding a model family"):

* ``FAMILY_INFO`` in its module: its name, HF ``config.model_type`` values and config-time capabilities (hybrid,
  parity, backends), read without importing it (:mod:`tor_exp.models.families.registry`);
* :meth:`~ModelAdapter.model_class`: the HF model class it handles;
* :meth:`~ModelAdapter.shape`: the dimensions the FLOP model needs (per-layer parts for hybrids);
* :meth:`~ModelAdapter.embed`, :meth:`~ModelAdapter.blocks`, :meth:`~ModelAdapter.final_norm`,
  :meth:`~ModelAdapter.logits`: where the embedding, the blocks, the final norm and the LM head are (with any
  multipliers the family applies around them);
* :meth:`~ModelAdapter.step`: how one block steps on the two streams (``hidden``, ``residual``), shaped like
  mamba_ssm's ``Block``; it keeps padding out of every cache and, when asked, captures the ranking signal
  through :meth:`~ModelAdapter.capture_ranking` (the adapter knows its mixer kind);
* :meth:`~ModelAdapter.new_cache` / :meth:`~ModelAdapter.decode_step`: how the cache is laid out and how one
  token is decoded after a (reduced) prefill;
* :meth:`~ModelAdapter.tiny_config` / :meth:`~ModelAdapter.model_class`: a random tiny model of the family.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, ContextManager, Optional, Sequence

import torch
from torch import Tensor, nn


if TYPE_CHECKING:  # pragma: no cover
    from tor_exp.models.families.registry import FamilyInfo
    from tor_exp.models.shape import ModelShape


@dataclass
class DecodeState:
    """What decoding after a reduced prefill needs beyond HF's cache (hybrids; METHOD.md §7).

    ``key_valid``: per attention layer, [B, K] which cached key/value slots are real tokens (each layer saw its
    own, possibly reduced and padded, sequence); ``next_position`` [B]: the original position of the next token of
    each row (its prompt's real length plus the tokens decoded so far), used for RoPE. ``key_positions``: per
    sliding-window attention layer, [B, K] the original position of each cached slot (LFM3's window rule).
    """

    key_valid: dict[int, Tensor] = field(default_factory=dict)
    key_positions: dict[int, Tensor] = field(default_factory=dict)
    next_position: Optional[Tensor] = None


#: cache → its decode bookkeeping (a weak map: the state lives exactly as long as the cache HF or the caller holds)
_DECODE_STATES: "weakref.WeakKeyDictionary[Any, DecodeState]" = weakref.WeakKeyDictionary()


def decode_state(cache: Any, create: bool = False) -> Optional[DecodeState]:
    """The :class:`DecodeState` of ``cache`` (a new one with ``create``; None if there is none)."""
    if cache is None:
        return None
    state = _DECODE_STATES.get(cache)
    if state is None and create:
        state = _DECODE_STATES[cache] = DecodeState()
    return state


@dataclass
class LayerInput:
    """Everything a block needs besides its two input streams, for one forward (prefill or decode step).

    valid [B, N]: real tokens (False = padding); ``all_valid``: no padding at all (read once per segment by the
    loop, so steps never synchronise); positions [B, N] or None: each token's original position among its row's
    real tokens (RoPE; 0 at padding; only for hybrids); streams: other per-token streams that travel with the
    tokens (Zamba2's embedding stream); cache: the HF cache being filled (prefill) or read (decode); want_ssm:
    capture this block's SSM output y; bookkeeping: the cache's :class:`DecodeState` (hybrids with a cache);
    decode: this is a decode step on top of a filled cache; segment: what a step derives from the token state
    alone (a hybrid's attention mask, rotary tables, left-alignment order), shared by the layers of one segment
    (the loop starts a new dict after each reduction and per forward), so it is computed once there, not per layer.
    """

    valid: Tensor
    all_valid: bool
    positions: Optional[Tensor] = None
    streams: dict[str, Tensor] = field(default_factory=dict)
    cache: Any = None
    want_ssm: bool = False
    bookkeeping: Optional[DecodeState] = None
    decode: bool = False
    segment: dict[Any, Any] = field(default_factory=dict)


@dataclass
class StepOutput:
    """A block's output: ``hidden`` and ``residual`` (None when the block returns one stream: its output is then
    ``hidden`` and its input is ``features["block_input"]``) and the captured ``features``
    (``ssm_out`` [B, N, D'] when asked)."""

    hidden: Tensor
    residual: Optional[Tensor]
    features: dict[str, Tensor] = field(default_factory=dict)


class ModelAdapter:
    """One model family (see the module docstring for what a new family fills in)."""

    #: family name used in configs (``model.family``)
    family: ClassVar[str] = ""
    #: does a block return the two streams apart (mamba_ssm's Block) or one sum (HF decoder layers)
    two_streams: ClassVar[bool] = False
    #: the family has attention layers (a KV cache, RoPE, quadratic FLOPs)
    hybrid: ClassVar[bool] = False
    #: :class:`tor_exp.models.static_decode.StaticDecoder` can decode it (pure Mamba / Mamba-2 blocks)
    static_decode: ClassVar[bool] = False
    #: the model is a HF causal LM: its forward is swapped by ``patch`` and its cache filled by a prefill (the
    #: benchmarks, generation); False for mamba_ssm's own ``MambaLMHeadModel``
    hf_model: ClassVar[bool] = True

    @property
    def info(self) -> "FamilyInfo":
        """The family's declaration (name, model types, config-time capabilities)."""
        from tor_exp.models.families.registry import family_info

        return family_info(self.family)

    # -------------------------------------------------------------------------------- what the family is
    def model_class(self) -> type:
        """The HF causal-LM class of the family."""
        raise NotImplementedError

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, self.model_class())

    def tiny_config(self, tiny: Any, vocab: dict[str, int]) -> Any:
        """The HF config of a random tiny model (``model.source: tiny``; ``tiny`` is a TinyModelConfig,
        ``vocab`` holds vocab_size / pad / bos / eos ids)."""
        raise NotImplementedError

    def config_shape(self, config: Any) -> "ModelShape":
        """The FLOP-model shape of a HF config of this family."""
        raise NotImplementedError

    def shape(self, model: nn.Module) -> "ModelShape":
        return self.config_shape(model.config)

    def num_layers(self, model: nn.Module) -> int:
        return len(self.blocks(model))

    def vocab_size(self, model: nn.Module) -> int:
        return int(model.config.vocab_size)

    def max_length(self, model: nn.Module) -> Optional[int]:
        """The longest input the model was built for (its position table), None for an SSM without one."""
        for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
            value = getattr(model.config, key, None)
            if value:
                return int(value)
        return None

    # -------------------------------------------------------------------------------- the forward pieces
    def embed(self, model: nn.Module, input_ids: Tensor) -> Tensor:
        raise NotImplementedError

    def given_embeddings(self, model: nn.Module, inputs_embeds: Tensor) -> Tensor:
        """What the first layer sees when the caller passes ``inputs_embeds`` instead of ids (HF's own rule for the
        family: some scale given embeddings as they scale looked-up ones)."""
        return inputs_embeds

    def streams(self, model: nn.Module, embeddings: Tensor) -> dict[str, Tensor]:
        """Per-token streams besides hidden and residual that every later block reads (none by default)."""
        return {}

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        raise NotImplementedError

    def step(self, model: nn.Module, index: int, block: nn.Module, hidden: Tensor, residual: Optional[Tensor],
             inp: LayerInput) -> StepOutput:
        raise NotImplementedError

    def capture_ranking(self, block: nn.Module, store: dict[str, Tensor]) -> Optional[ContextManager[None]]:
        """A context in which ``block``'s next forward puts the per-token output its ranking part yields (the part
        whose :attr:`~tor_exp.models.shape.Part.ranks` is true: a Mamba mixer's y before its gate, a short
        convolution's gated output, ...) into ``store["ssm_out"]`` ([B, N, D']); None when the block has no such
        part. Prefer a forward hook on a submodule (:mod:`tor_exp.models.families.capture`); a rebinding of a
        dependency's function belongs in :mod:`tor_exp.compat`."""
        return None

    def final_norm(self, model: nn.Module, hidden: Tensor, residual: Optional[Tensor]) -> Tensor:
        raise NotImplementedError

    def logits(self, model: nn.Module, hidden: Tensor, as_float: bool = True) -> Tensor:
        """LM head over final normed hidden states (multipliers of the family included), as float32 unless
        ``as_float`` is False."""
        head = model.lm_head
        out = head(hidden.to(head.weight.dtype))
        return out.float() if as_float else out

    # -------------------------------------------------------------------------------- caches and decoding
    def new_cache(self, model: nn.Module) -> Any:
        from transformers.cache_utils import DynamicCache

        return DynamicCache(config=model.config)

    def cache_has_state(self, cache: Any) -> bool:
        """Whether ``cache`` already holds a prefill (the next forward is a decode step)."""
        if cache is None:
            return False
        try:
            return bool(cache.has_previous_state())
        except (ValueError, IndexError, AttributeError):  # a cache without SSM layers: its keys say it
            return cache.get_seq_length() > 0 if hasattr(cache, "get_seq_length") else False

    def decode_step(self, model: nn.Module, original_class: type, input_ids: Tensor, cache: Any,
                    **kwargs: Any) -> Any:
        """One unreduced decode step (HF output with ``.logits``) on top of a filled ``cache``."""
        return original_class.forward(model, input_ids=input_ids, cache=cache, use_cache=True, **kwargs)

    def cache_bytes(self, cache: Any) -> dict[str, int]:
        """Bytes a filled cache holds, by kind: ``kv`` (attention keys/values) and ``ssm`` (conv + SSM states)."""
        kv = ssm = 0
        for layer in getattr(cache, "layers", []) or []:
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, Tensor):
                    kv += t.numel() * t.element_size()
            for name in ("conv_states", "recurrent_states"):
                states = getattr(layer, name, None)
                for t in (states.values() if isinstance(states, dict) else (states or [])):
                    if isinstance(t, Tensor):
                        ssm += t.numel() * t.element_size()
        return {"kv": kv, "ssm": ssm}


def first_real_column(valid: Tensor) -> Tensor:
    """[B] column of each row's first real token (0 for an empty row)."""
    n = valid.shape[1]
    cols = torch.arange(n, device=valid.device).expand_as(valid)
    return torch.where(valid, cols, n).min(dim=1).values.clamp(max=max(n - 1, 0))

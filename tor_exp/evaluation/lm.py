"""lm-eval ``LM`` backend for (token-reduced) Mamba / Mamba-2 models.

Registered as ``tor_exp`` so it works both in-process (``TorExpLM(model=..., tokenizer=...)``) and from lm-eval's
own ``simple_evaluate(model="tor_exp", model_args="model=<config name>,reduction=<name>,...")``.

Scoring follows lm-eval's causal recipe (input = (context + continuation)[:-1], right padding) and reuses its
request plumbing (``Collator``, rolling windows, stop-sequence handling). What differs is alignment under
reduction (see ``docs``/METHOD.md §5):

* ``exact``: the scored positions and all padding are protected; logits are gathered by the *original position*
  each surviving token reports, so every continuation token is predicted from its true predecessor.
* ``offset``: the released evaluation's rule. Nothing is protected and lm-eval's slice ``[ctx_len - contlen :
  ctx_len]`` with ``ctx_len = inplen - removed`` is taken from the shortened logits. Rows are independent (padding
  never takes part), i.e. this is the released code at batch size 1. Requests whose slice is shorter than the
  continuation (or empty) score log-likelihood 0 and count as greedy-correct, as the released code does; they are
  counted, and so are full-length slices that read logits from the wrong positions ("misaligned").

Per task the backend records the realised backbone FLOPs reduction from the real per-layer token counts.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    Collator,
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from lm_eval.models.utils_hf import stop_sequences_criteria
from tqdm import tqdm

import lm_eval.models  # noqa: F401  (fills lm-eval's lazy model registry before ours is added)
from tor_exp.errors import ConfigError
from tor_exp.evaluation.config import resolve_alignment

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 2048
UNKNOWN_TASK = "<unknown>"


# ----------------------------------------------------------------------------------------------- model access
def _plain_reduced_forward(model, input_ids, attention_mask=None, protected=None, logits="all"):
    """Stand-in with ``reduced_forward``'s contract for an unpatched model (nothing removed)."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    valid = attention_mask.bool()
    b, n = input_ids.shape
    positions = torch.arange(n, device=input_ids.device).expand(b, n).masked_fill(~valid, -1)
    layers = num_layers(model)
    per_layer = valid.sum(1, keepdim=True).expand(b, layers)
    return SimpleNamespace(logits=out.logits, positions=positions, valid=valid, tokens_per_layer=per_layer)


def get_reduced_forward() -> Callable:
    """``tor_exp.models.patching.reduced_forward`` once it exists, else the plain stand-in."""
    if importlib.util.find_spec("tor_exp.models") is not None and \
            importlib.util.find_spec("tor_exp.models.patching") is not None:
        from tor_exp.models.patching import reduced_forward

        return reduced_forward
    return _plain_reduced_forward


def num_layers(model) -> int:
    cfg = model.config
    for key in ("num_hidden_layers", "n_layer", "n_layers"):
        if getattr(cfg, key, None):
            return int(getattr(cfg, key))
    raise ValueError("cannot tell the number of layers from the model config")


def per_row_layer_tokens(tokens_per_layer: torch.Tensor, batch: int, layers: int) -> torch.Tensor:
    """Σ over layers of the tokens each row's layers processed, as float [B].

    Accepts [B, L] (the contract) and [B, L+1] (last entry = tokens reaching the final norm, dropped)."""
    t = torch.as_tensor(tokens_per_layer).detach().to("cpu", torch.float64)
    if t.dim() != 2 or t.shape[0] != batch or t.shape[1] not in (layers, layers + 1):
        raise ValueError(f"tokens_per_layer of shape {tuple(t.shape)}: expected [{batch}, {layers}]")
    return t[:, :layers].sum(1)


# ----------------------------------------------------------------------------------------------- statistics
@dataclass
class TaskStats:
    """Per-task request accounting; ``realised_reduction`` = 1 − Σ real layer-tokens / Σ full layer-tokens."""

    requests: int = 0
    loglikelihood_requests: int = 0
    rolling_requests: int = 0
    generate_requests: int = 0
    input_tokens: int = 0
    layer_tokens_full: float = 0.0
    layer_tokens_real: float = 0.0
    offset_short: int = 0
    offset_empty: int = 0
    offset_misaligned: int = 0

    @property
    def realised_reduction(self) -> float:
        if self.layer_tokens_full <= 0:
            return 0.0
        return 1.0 - self.layer_tokens_real / self.layer_tokens_full

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "realised_reduction": self.realised_reduction}


# ----------------------------------------------------------------------------------------------- the backend
def _as_int(key: str, value: Any) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"eval.{key}={value!r}: must be a positive integer") from None
    if out <= 0:
        raise ConfigError(f"eval.{key}={value!r}: must be a positive integer")
    return out


@register_model("tor_exp")
class TorExpLM(TemplateLM):
    """lm-eval backend over a (patched) HF Mamba / Mamba-2 model.

    In-process: ``TorExpLM(model=<nn.Module>, tokenizer=<tokenizer>)``. From lm-eval model_args: ``model`` (a
    model config name / YAML path), ``reduction`` (a reduction config name or ``none``) and any Hydra overrides as
    dotted keys (``reduction.target_flops=0.3``); the model is built with ``tor_exp.models.loading.load_model``
    and patched.
    """

    backend = "causal"

    def __init__(
        self,
        model: Any = None,
        tokenizer: Any = None,
        *,
        pretrained: Any = None,
        reduction: Optional[str] = None,
        alignment: str = "auto",
        batch_size: Any = 8,
        max_length: Optional[int] = None,
        max_gen_toks: int = 256,
        device: Optional[str] = None,
        add_bos_token: Optional[bool] = None,
        prefix_token_id: Optional[int] = None,
        target_flops: Optional[float] = None,
        reduced_forward: Optional[Callable] = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        model = model if model is not None else pretrained
        overrides.pop("max_batch_size", None)  # passed by simple_evaluate; batches here are fixed-size
        if model is None or isinstance(model, str):
            if model is None:
                raise ConfigError("eval model_args: `model` (a model config name or path) is required")
            model, tokenizer, target = build_from_config(model, reduction, overrides, device)
            target_flops = target if target_flops is None else target_flops
        elif overrides:
            raise ConfigError(f"eval model_args {sorted(overrides)}: overrides need `model` given by name")
        if tokenizer is None:
            raise ConfigError("eval model_args: a tokenizer is required with an in-memory model")
        if batch_size == "auto" or (isinstance(batch_size, str) and batch_size.startswith("auto")):
            raise ConfigError(f"eval.batch_size={batch_size!r}: must be a positive integer (no auto)")
        self.model = model.eval()
        self.tokenizer = tokenizer
        from tor_exp.models.patching import get_patch

        self.alignment = resolve_alignment(alignment, getattr(get_patch(model), "method", None))  # auto ⇒ by method
        self.batch_size = _as_int("batch_size", batch_size)
        self._max_length = int(max_length) if max_length else None
        self._max_gen_toks = int(max_gen_toks)
        # inputs follow the model; ``device`` only places a model built by name
        self._device = next(model.parameters()).device
        self.add_bos_token = add_bos_token
        self.custom_prefix_token_id = prefix_token_id
        self.target_flops = None if target_flops is None else float(target_flops)
        self._reduced_forward = reduced_forward or get_reduced_forward()
        self.layers = num_layers(model)
        self.stats: dict[str, TaskStats] = {}
        self._task_names: Optional[list[str]] = None

    # ------------------------------------------------------------------ properties lm-eval asks for
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        if self.custom_prefix_token_id is not None:
            return int(self.custom_prefix_token_id)
        if self.tokenizer.bos_token_id is not None:
            return self.tokenizer.bos_token_id
        return self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        if self._max_length:
            return self._max_length
        for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
            value = getattr(self.model.config, key, None)
            if value:
                return int(value)
        return DEFAULT_MAX_LENGTH

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "tor_exp")).replace("/", "__")

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.eot_token_id)

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs) -> list[int]:
        if add_special_tokens is not None:
            special = {"add_special_tokens": add_special_tokens}
        elif self.add_bos_token is not None:
            special = {"add_special_tokens": self.add_bos_token}
        else:
            special = {}
        return self.tokenizer.encode(string, **special)

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------ statistics
    def reset_stats(self) -> None:
        self.stats = {}

    def stats_dict(self) -> dict[str, dict[str, Any]]:
        return {task: s.to_dict() for task, s in sorted(self.stats.items())}

    def _stat(self, task: str) -> TaskStats:
        return self.stats.setdefault(task, TaskStats())

    # ------------------------------------------------------------------ lm-eval entry points
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        self._task_names = [getattr(r, "task_name", None) or UNKNOWN_TASK for r in requests]
        try:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self._task_names = None

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, *, task_names=None,
                              score_all: bool = False) -> list[tuple[float, bool]]:
        """Score (context, continuation) token pairs; ``score_all`` marks rolling windows (all protected)."""
        if task_names is None:
            task_names = self._task_names or [UNKNOWN_TASK] * len(requests)
        items = list(zip(range(len(requests)), requests, task_names))

        def _sort_key(item):
            toks = item[1][1] + item[1][2]
            return -len(toks), tuple(toks)

        reorder = Collator(items, sort_fn=_sort_key)
        results: list[tuple[float, bool]] = []
        pbar = tqdm(total=len(items), disable=disable_tqdm, desc="Running loglikelihood requests")
        for chunk in reorder.get_batched(n=self.batch_size):
            results.extend(self._score_batch(chunk, score_all=score_all))
            pbar.update(len(chunk))
        pbar.close()
        ordered = reorder.get_original(results)
        for (_, (request_str, _, _), _), answer in zip(items, ordered):
            if request_str is not None:
                self.cache_hook.add_partial("loglikelihood", request_str, answer)
        return ordered

    @torch.no_grad()
    def _score_batch(self, chunk, *, score_all: bool) -> list[tuple[float, bool]]:
        inputs, cont_lens, conts = [], [], []
        for _, (_, ctx, cont), _ in chunk:
            if not ctx or not cont:
                raise ValueError("loglikelihood requests need non-empty context and continuation tokens")
            if len(cont) > self.max_length:
                raise ValueError(f"continuation of {len(cont)} tokens exceeds max_length={self.max_length}")
            whole = (ctx + cont)[-(self.max_length + 1):]
            inputs.append(whole[:-1])
            cont_lens.append(len(cont))
            conts.append(cont)
        dev = self._device
        b = len(inputs)
        inplen = torch.tensor([len(x) for x in inputs], device=dev)
        contlen = torch.tensor(cont_lens, device=dev)
        width = int(inplen.max())
        input_ids = torch.full((b, width), self.pad_token_id, dtype=torch.long, device=dev)
        for i, x in enumerate(inputs):  # right padding
            input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long, device=dev)
        col = torch.arange(width, device=dev)
        mask = col[None, :] < inplen[:, None]
        if score_all:
            protected = torch.ones_like(mask)
        elif self.alignment == "exact":
            protected = col[None, :] >= (inplen - contlen)[:, None]  # scored positions + padding
        else:
            protected = ~mask  # padding only (it is invalid anyway)
        out = self._reduced_forward(self.model, input_ids, attention_mask=mask.long(), protected=protected,
                                    logits="all")
        positions = out.positions.to(dev)
        valid = out.valid.to(dev).bool() & (positions >= 0)
        n_out = positions.shape[1]

        cmax = int(contlen.max())
        k = torch.arange(cmax, device=dev)
        cmask = k[None, :] < contlen[:, None]
        cont_toks = torch.zeros((b, cmax), dtype=torch.long, device=dev)
        for i, c in enumerate(conts):
            cont_toks[i, : len(c)] = torch.tensor(c, dtype=torch.long, device=dev)
        # original position that predicts continuation token k
        target_pos = (inplen - contlen)[:, None] + k[None, :]

        # where each original position ended up in the reduced output (-1 = removed or merged away)
        where = torch.full((b, width + 1), -1, dtype=torch.long, device=dev)
        src = torch.arange(n_out, device=dev).expand(b, n_out)
        where.scatter_(1, torch.where(valid, positions, torch.full_like(positions, width)), src)
        exact_idx = where[:, :width].gather(1, target_pos.clamp(max=width - 1))

        n_valid = valid.sum(1)
        short = torch.zeros(b, dtype=torch.bool, device=dev)
        if self.alignment == "exact" or score_all:
            if bool(((exact_idx < 0) & cmask).any()):
                raise RuntimeError("reduced_forward removed a protected (scored) position")
            idx = exact_idx
        else:
            # released rule per row: slice [ctx_len - contlen : ctx_len] of the row's surviving logits,
            # ctx_len = inplen - removed = n_valid; Python slicing with a negative start gives fewer rows.
            short = n_valid < contlen
            # survivors are compacted in order, so the row's j-th valid output is output index j
            idx = (n_valid - contlen)[:, None] + k[None, :]
        idx = torch.where(cmask & ~short[:, None], idx, torch.zeros_like(idx)).clamp(min=0, max=n_out - 1)
        rows = torch.arange(b, device=dev)[:, None]
        picked = F.log_softmax(out.logits[rows, idx].float(), dim=-1)  # [B, C, V]
        token_lp = picked.gather(2, cont_toks[..., None]).squeeze(-1)
        greedy_ok = (picked.argmax(-1) == cont_toks) | ~cmask
        logprob = (token_lp * cmask).sum(1)
        greedy = greedy_ok.all(1)
        logprob = torch.where(short, torch.zeros_like(logprob), logprob)
        greedy = greedy | short
        misaligned = ((idx != exact_idx) & cmask).any(1) & ~short

        real = per_row_layer_tokens(out.tokens_per_layer, b, self.layers)
        answers = []
        for i, (_, _, task) in enumerate(chunk):
            st = self._stat(task)
            st.requests += 1
            if score_all:
                st.rolling_requests += 1
            else:
                st.loglikelihood_requests += 1
            st.input_tokens += int(inplen[i])
            st.layer_tokens_full += float(self.layers * int(inplen[i]))
            st.layer_tokens_real += float(real[i])
            if self.alignment == "offset" and not score_all:
                st.offset_short += int(short[i])
                st.offset_empty += int(short[i] and n_valid[i] == 0)
                st.offset_misaligned += int(misaligned[i])
            answers.append((float(logprob[i]), bool(greedy[i])))
        return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Perplexity-style scoring. Every position is scored, so every position is protected: nothing is
        reducible and the realised reduction is 0 for these requests (in both alignments)."""
        windows, owners, tasks = [], [], []
        for n, req in enumerate(requests):
            (string,) = req.args
            task = getattr(req, "task_name", None) or UNKNOWN_TASK
            for ctx, cont in map(
                lm_utils.make_disjoint_window,
                lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1),
            ):
                windows.append((None, ctx, cont))
                owners.append(n)
                tasks.append(task)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm, task_names=tasks,
                                            score_all=True) if windows else []
        totals = [0.0] * len(requests)
        for n, (lp, _) in zip(owners, scores):
            totals[n] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return [float(t) for t in totals]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Generation with lm-eval's stop handling through the model's ``generate``: a patched model reduces the
        prefill only (METHOD.md §5). Requests are counted; their FLOPs are not measured (no token counts)."""
        reorder = Collator([(r.args, getattr(r, "task_name", None) or UNKNOWN_TASK) for r in requests],
                           sort_fn=lambda x: (-len(self.tok_encode(x[0][0])), x[0][0]),
                           group_by="gen_kwargs", group_fn=lambda x: x[0][1])
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        results: list[str] = []
        pbar = tqdm(total=len(requests), disable=disable_tqdm, desc="Running generate_until requests")
        for chunk in reorder.get_batched(n=self.batch_size):
            contexts = [c[0][0] for c in chunk]
            kwargs = normalize_gen_kwargs(chunk[0][0][1], self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen = kwargs.pop("max_gen_toks")
            kwargs.pop("max_length", None)
            if not kwargs.get("do_sample"):
                kwargs.pop("temperature", None)
            encoded = [self.tok_encode(c)[-(self.max_length - max_gen):] for c in contexts]
            width = max(len(e) for e in encoded)
            ids = torch.full((len(encoded), width), self.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, e in enumerate(encoded):  # left padding for generation
                ids[i, width - len(e):] = torch.tensor(e, dtype=torch.long)
                mask[i, width - len(e):] = 1
            ids, mask = ids.to(self._device), mask.to(self._device)
            stopping = stop_sequences_criteria(self.tokenizer, until, width, len(encoded))
            with torch.no_grad():
                # a patched model reduces the prefill only (last prompt token protected), decodes unreduced
                out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_gen,
                                          stopping_criteria=stopping, pad_token_id=self.pad_token_id,
                                          use_cache=True, **kwargs)
            sequences = out.sequences if hasattr(out, "sequences") else out
            for row, (args, task), ctx_tokens in zip(sequences.tolist(), chunk, encoded):
                text = postprocess_generated_text(self.tok_decode(row[width:]), until, None)
                results.append(text)
                st = self._stat(task)
                st.requests += 1
                st.generate_requests += 1
                self.cache_hook.add_partial("generate_until", args, text)
            pbar.update(len(chunk))
        pbar.close()
        return reorder.get_original(results)


# ----------------------------------------------------------------------------------------------- build by name
def build_from_config(model: str, reduction: Optional[str], overrides: dict[str, Any],
                      device: Optional[str] = None):
    """Compose the project's Hydra config for ``model`` / ``reduction`` and return (model, tokenizer, target)."""
    from tor_exp.evaluation.building import build_patched_model

    return build_patched_model(model, reduction, overrides, device=device)

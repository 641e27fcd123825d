"""lm-eval ``LM`` backend for (token-reduced) models of every family tor_exp drives: Mamba, Mamba-2 and the
hybrids that mix Mamba-2, Gated DeltaNet / KDA or short-convolution layers with attention.

``TorExpLM(model=..., tokenizer=...)`` scores an in-memory model, patched or not. Importing this module
registers nothing: the lm-eval model name ``tor_exp`` (models built by config name, which needs the config layer
above this package) is registered by the entry point ``tor_exp.lm_eval`` (``import tor_exp.lm_eval``).

Scoring follows lm-eval's causal recipe and reuses its request plumbing (``Collator``, rolling windows, stop
sequences). Per batch: :func:`~tor_exp.evaluation.scoring.pack` → :meth:`TorExpLM._model_call` (the one place
scoring calls the model) → :func:`~tor_exp.evaluation.scoring.score_continuations` (the alignment rule,
METHOD.md §5) → per-task statistics, including the realised backbone FLOPs reduction from the real per-layer token
counts, kept in the backend's :class:`~tor_exp.evaluation.ledger.Ledger`. Generation calls the model in
:meth:`TorExpLM._model_generate` only (lm-eval's HFLM has the same pair).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Sequence

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import (
    Collator,
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from lm_eval.models.utils_hf import stop_sequences_criteria
from tqdm import tqdm

from tor_exp import distributed
from tor_exp.errors import ConfigError
from tor_exp.evaluation.config import AUTO, batch_size_setting, resolve_alignment
from tor_exp.evaluation.ledger import UNKNOWN_TASK, Ledger, request_tasks
from tor_exp.evaluation.scoring import pack, protected_mask, score_continuations
from tor_exp.models.families import adapter_of, model_shape
from tor_exp.models.patching import ReducedOutput, reduced_forward

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 2048
#: our progress bars' label; the runner keeps these and silences lm-eval's own bars unless eval.verbose
PROGRESS_PREFIX = "tor_exp scoring"
#: lm-eval's HFLM starts its batch size search here when no max_batch_size is given
DEFAULT_MAX_BATCH_SIZE = 64


# ----------------------------------------------------------------------------------------------- the backend
def _as_int(key: str, value: Any) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"eval.{key}={value!r}: must be a positive integer") from None
    if out <= 0:
        raise ConfigError(f"eval.{key}={value!r}: must be a positive integer")
    return out


def detect_batch_size(probe: Callable[[int], Any], start: int) -> int:
    """The largest batch size from ``start`` down at which ``probe(batch_size)`` runs without running out of
    memory: accelerate's ``find_executable_batch_size`` (lm-eval's HFLM uses the same search); 1 when none fits."""
    from accelerate.utils import find_executable_batch_size

    @find_executable_batch_size(starting_batch_size=start)
    def fits(batch_size: int) -> int:
        probe(batch_size)
        return batch_size

    try:
        return fits()
    except RuntimeError as err:
        if "No executable batch size found" in str(err):
            return 1
        raise


class TorExpLM(TemplateLM):
    """lm-eval backend over an in-memory (patched or plain) model of any family (:mod:`tor_exp.models.families`) and
    its tokenizer.

    Models given by config name (lm-eval's ``model_args``) are built by ``tor_exp.lm_eval.TorExpByName``,
    registered with lm-eval as ``tor_exp``. The model is called in two places only: :meth:`_model_call`
    (scoring) and :meth:`_model_generate` (generation).
    """

    backend = "causal"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        alignment: str = "auto",
        batch_size: Any = 8,
        max_batch_size: Optional[int] = None,
        max_length: Optional[int] = None,
        max_gen_toks: int = 256,
        add_bos_token: Optional[bool] = None,
        prefix_token_id: Optional[int] = None,
    ) -> None:
        super().__init__()
        if tokenizer is None:
            raise ConfigError("eval model_args: a tokenizer is required with an in-memory model")
        self.model = model.eval()
        self.tokenizer = tokenizer
        from tor_exp.models.patching import get_patch

        self.alignment = resolve_alignment(alignment, getattr(get_patch(model), "method", None))  # auto ⇒ by method
        self.batch_size = batch_size_setting(batch_size)  # an int, or "auto"
        self.max_batch_size = _as_int("max_batch_size", max_batch_size or DEFAULT_MAX_BATCH_SIZE)
        #: batch sizes found with batch_size=auto, per request type (lm-eval records these in its results)
        self.batch_sizes: dict[str, int] = {}
        self._max_length = int(max_length) if max_length else None
        self._max_gen_toks = int(max_gen_toks)
        self._device = next(model.parameters()).device  # inputs follow the model
        self.add_bos_token = add_bos_token
        self.custom_prefix_token_id = prefix_token_id
        self.layers = adapter_of(model).num_layers(model)
        #: the per-task FLOPs/token ledger of this process's requests (its shard in a data-parallel run)
        self.ledger = Ledger(model_shape(model), self.layers)
        # data parallel (torchrun / accelerate launch / Slurm tasks): lm-eval's evaluator gives this rank its
        # shard of the requests and gathers the per-rank results through the three methods below
        self._rank, self._world_size = distributed.rank(), distributed.world_size()

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
        return adapter_of(self.model).max_length(self.model) or DEFAULT_MAX_LENGTH

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

    # ------------------------------------------------------------------ data parallel (lm-eval's LM API)
    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return distributed.all_gather(tensor)

    def gather_object(self, obj: Any, dst: int = 0) -> Optional[list[Any]]:
        return distributed.gather_object(obj, dst=dst)

    def barrier(self) -> None:
        distributed.barrier()

    # ------------------------------------------------------------------ statistics
    def reset_stats(self) -> None:
        self.ledger.clear()

    def stats_dict(self) -> dict[str, dict[str, Any]]:
        return self.ledger.as_dict()

    def gathered_stats_dict(self) -> dict[str, dict[str, Any]]:
        """:meth:`stats_dict` over every rank's shard, on rank 0 (every rank must call it; others get {}).
        One process: :meth:`stats_dict` itself."""
        return self.ledger.gathered(lambda shard: self.gather_object(shard, dst=0))

    # ------------------------------------------------------------------ lm-eval entry points
    def _encode_request(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context tokens, continuation tokens) by lm-eval's rule (``TemplateLM.loglikelihood``, lm-eval 0.4.13;
        tests/evaluation/test_task_ledger.py holds the two equal): an empty context becomes the prefix token (BOS/EOS),
        or the continuation's first token when that already is the prefix token."""
        if context == "":
            cont = self.tok_encode(continuation, add_special_tokens=False)
            return ([self.prefix_token_id], cont) if self.prefix_token_id != cont[0] else (cont[:1], cont[1:])
        return self._encode_pair(context, continuation)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """lm-eval's loglikelihood, tokenized here so that each request's task goes to the ledger with it."""
        encoded = [(tuple(req.args), *self._encode_request(*req.args)) for req in requests]
        return self._loglikelihood_tokens(encoded, disable_tqdm=disable_tqdm,
                                          task_names=request_tasks(requests, self.world_size))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, *,
                              task_names: Optional[Sequence[Optional[str]]] = None,
                              score_all: bool = False) -> list[tuple[float, bool]]:
        """Score (context, continuation) token pairs; ``score_all`` marks rolling windows (all protected).
        ``task_names``: each pair's task for the ledger (None: a padding copy, not counted); not given, every pair
        is counted under ``UNKNOWN_TASK``."""
        if task_names is None:
            task_names = [UNKNOWN_TASK] * len(requests)
        items = list(zip(range(len(requests)), requests, task_names))

        def _sort_key(item):
            toks = item[1][1] + item[1][2]
            return -len(toks), tuple(toks)

        reorder = Collator(items, sort_fn=_sort_key)
        results: list[tuple[float, bool]] = []
        kind = "loglikelihood_rolling" if score_all else "loglikelihood"
        longest = min(items, key=_sort_key) if items else None
        size = self._batch_size(kind, lambda n: self._score_batch([longest] * n, score_all=score_all, count=False))
        pbar = tqdm(total=len(items), disable=disable_tqdm, desc=f"{PROGRESS_PREFIX} loglikelihood")
        for chunk in reorder.get_batched(n=size):
            results.extend(self._score_batch(chunk, score_all=score_all))
            pbar.update(len(chunk))
        pbar.close()
        ordered = reorder.get_original(results)
        for (_, (request_str, _, _), _), answer in zip(items, ordered):
            if request_str is not None:
                self.cache_hook.add_partial("loglikelihood", request_str, answer)
        return ordered

    def _model_call(self, input_ids: torch.Tensor, valid: torch.Tensor, protected: torch.Tensor) -> ReducedOutput:
        """The one place scoring calls the model: a (reduced) forward with every position's logits."""
        return reduced_forward(self.model, input_ids, attention_mask=valid.long(), protected=protected, logits="all")

    @torch.no_grad()
    def _model_generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                        stopping_criteria: Any = None, **generation_kwargs: Any) -> torch.Tensor:
        """The one place generation calls the model: its ``generate`` (a patched model reduces the prefill only,
        the last prompt token protected, and decodes unreduced: METHOD.md §5) → sequences [B, prompt + new]."""
        out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                  stopping_criteria=stopping_criteria, pad_token_id=self.pad_token_id,
                                  use_cache=True, **generation_kwargs)
        return out.sequences if hasattr(out, "sequences") else out

    def _batch_size(self, kind: str, probe: Callable[[int], Any]) -> int:
        """The fixed batch size, or with ``auto`` the largest that fits this call's longest request (found anew
        on every call, as lm-eval does: each request type and each call has its own longest request)."""
        if self.batch_size != AUTO:
            return int(self.batch_size)
        # every replica scores its shard with the size the most constrained one can hold (as HFLM does)
        self.batch_sizes[kind] = distributed.min_over_ranks(detect_batch_size(probe, self.max_batch_size))
        log.info("batch_size=auto: %d for %s requests", self.batch_sizes[kind], kind)
        return self.batch_sizes[kind]

    @torch.no_grad()
    def _score_batch(self, chunk, *, score_all: bool, count: bool = True) -> list[tuple[float, bool]]:
        batch = pack([(ctx, cont) for _, (_, ctx, cont), _ in chunk], max_length=self.max_length,
                     pad_id=self.pad_token_id, device=self._device)
        alignment = "exact" if score_all else self.alignment
        out = self._model_call(batch.input_ids, batch.valid, protected_mask(batch, alignment, score_all=score_all))
        scores = score_continuations(out.logits, out.positions, out.valid, batch, alignment)
        if count:
            self.ledger.count_scored([task for _, _, task in chunk], batch.input_lengths[:len(chunk)],
                                     out.tokens_per_layer, rolling=score_all,
                                     offset=scores if alignment == "offset" else None)
        return [(float(lp), bool(g)) for lp, g in zip(scores.logprob.tolist(), scores.greedy.tolist())]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Perplexity-style scoring. Every position is scored, so every position is protected: nothing is
        reducible and the realised reduction is 0 for these requests (in both alignments)."""
        windows, owners, tasks = [], [], []
        for n, (req, task) in enumerate(zip(requests, request_tasks(requests, self.world_size))):
            (string,) = req.args
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

    def _generation_probe(self, requests) -> Callable[[int], Any]:
        """``probe(n)``: the longest prompt of ``requests`` ``n`` times through ``generate`` for one new token (the
        (reduced) prefill is the memory peak: a recurrent layer's decode step keeps a fixed-size state per row, an
        attention layer's cache grows by one slot)."""
        longest = max((self.tok_encode(r.args[0])[-(self.max_length - self.max_gen_toks):] for r in requests),
                      key=len, default=[self.prefix_token_id]) or [self.prefix_token_id]

        def probe(n: int) -> None:
            ids = torch.tensor([longest] * n, dtype=torch.long, device=self._device)
            self._model_generate(ids, torch.ones_like(ids), max_new_tokens=1)

        return probe

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Generation with lm-eval's stop handling through :meth:`_model_generate`: a patched model reduces the
        prefill only (METHOD.md §5). Requests are counted; their FLOPs are not measured (no token counts)."""
        reorder = Collator(list(zip([r.args for r in requests], request_tasks(requests, self.world_size))),
                           sort_fn=lambda x: (-len(self.tok_encode(x[0][0])), x[0][0]),
                           group_by="gen_kwargs", group_fn=lambda x: x[0][1])
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        results: list[str] = []
        size = self._batch_size("generate_until", self._generation_probe(requests))
        pbar = tqdm(total=len(requests), disable=disable_tqdm, desc=f"{PROGRESS_PREFIX} generate_until")
        for chunk in reorder.get_batched(n=size):
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
            sequences = self._model_generate(ids, mask, max_gen, stopping_criteria=stopping, **kwargs)
            for row, (args, task), ctx_tokens in zip(sequences.tolist(), chunk, encoded):
                text = postprocess_generated_text(self.tok_decode(row[width:]), until, None)
                results.append(text)
                self.ledger.count_generated([task])
                self.cache_hook.add_partial("generate_until", args, text)
            pbar.update(len(chunk))
        pbar.close()
        return reorder.get_original(results)

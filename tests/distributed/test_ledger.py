"""The pieces of a data-parallel run that need no second process: lm-eval's padding copies stay out of the
per-task ledger, rank ledgers sum to the whole, non-zero ranks start no W&B run, one process is untouched."""
from __future__ import annotations

from types import SimpleNamespace

from tor_exp import distributed
from tor_exp.evaluation import lm as lm_module
from tor_exp.evaluation.ledger import Ledger, TaskStats, request_tasks
from tor_exp.lm_eval import without_wandb


def requests() -> list[SimpleNamespace]:
    a = SimpleNamespace(task_name="t1", repeats=1)
    b = SimpleNamespace(task_name="t2", repeats=2)
    return [a, b, b, a, a]  # evaluator order: a, b×repeats, then padding copies of the last request (a)


def test_padding_copies_are_not_counted() -> None:
    assert request_tasks(requests(), world_size=2) == ["t1", "t2", "t2", None, None]


def test_one_process_counts_every_request() -> None:
    assert request_tasks(requests(), world_size=1) == ["t1", "t2", "t2", "t1", "t1"]


def test_rank_ledgers_sum_to_the_whole() -> None:
    r0 = TaskStats(requests=3, loglikelihood_requests=3, input_tokens=30, layer_tokens_full=720.0,
                   layer_tokens_real=600.0, flops_full=7.0e9, flops_real=5.5e9)
    r1 = TaskStats(requests=2, loglikelihood_requests=2, input_tokens=20, layer_tokens_full=480.0,
                   layer_tokens_real=420.0, flops_full=3.0e9, flops_real=2.5e9)
    total = TaskStats.total([r0, r1])
    assert (total.requests, total.input_tokens, total.layer_tokens_real) == (5, 50, 1020.0)
    assert total.realised_reduction == 1 - 8.0e9 / 10.0e9
    assert TaskStats.total([r0]) == r0


def test_gathered_ledger_of_one_process_is_its_own() -> None:
    lm = lm_module.TorExpLM.__new__(lm_module.TorExpLM)
    lm.ledger = Ledger(shape=None, layers=1)  # type: ignore[arg-type]  # no batch is counted: no shape needed
    lm.ledger.tasks = {"t": TaskStats(requests=1, layer_tokens_full=10.0, layer_tokens_real=8.0)}
    assert lm.gathered_stats_dict() == lm.stats_dict()


def test_other_ranks_drop_wandb_options() -> None:
    argv = ["x", "--model", "tor_exp", "--wandb_args", "project=p", "--wandb_config_args=a=1", "--limit", "3"]
    assert without_wandb(argv) == ["x", "--model", "tor_exp", "--limit", "3"]


def test_single_process_starts_nothing(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env() is False and not distributed.active()
    assert distributed.gather_object({"a": 1}) == [{"a": 1}] and distributed.min_over_ranks(7) == 7
    assert distributed.local_device("cuda") == "cuda"

"""Test helpers: fixture-task requests built by lm-eval itself, offline."""
from __future__ import annotations

from lm_eval.tasks import get_task_dict

from tor_exp.evaluation.runner import task_manager

N_LAYER = 4
LOCATIONS = [0, 1]


def fixture_requests(tasks: list[str], limit: int) -> list:
    """lm-eval ``Instance`` objects of the given fixture tasks (first ``limit`` documents each)."""
    tm = task_manager(["pkg://tor_exp/evaluation/tasks"], tasks)
    task_dict = get_task_dict(tasks, tm)
    out = []
    for name in tasks:
        task = task_dict[name]
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        out.extend(task.instances)
    return out

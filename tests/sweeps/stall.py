"""A Hydra callback for the Slurm tests: a node that stalls the first attempt of chosen jobs.

Legitimately slow tiny jobs are always slow (a requeued job starts from scratch: nothing would ever finish), so
the tests make the *first attempt* of the chosen jobs stall the way a hung node or file system does: in
``on_job_start`` (after submitit installed its signal handlers, before the task) it writes a marker and sleeps
until the scheduler stops it (preemption, the time-limit signal); a later attempt finds the marker and runs
normally. The callback lives in Hydra's config (``hydra.callbacks``), so it is not part of the job's config hash.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class StallFirstAttempt(Callback):
    def __init__(self, marker_dir: str, jobs: list[int], seconds: float = 900.0) -> None:
        self.marker_dir = marker_dir
        self.jobs = [int(j) for j in jobs]
        self.seconds = float(seconds)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        num = int(config.hydra.job.num)
        if num not in self.jobs:
            return
        marker = Path(self.marker_dir) / f"stalled_{num}"
        if marker.exists():  # a later attempt: run normally
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{os.getpid()} {config.hydra.job.id}\n")
        time.sleep(self.seconds)

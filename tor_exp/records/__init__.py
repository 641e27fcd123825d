"""Run records: the one place a job's numbers are written.

``results.json`` on disk first (:mod:`~tor_exp.records.results`: the format, the resume rule), through the job's
locked output folder with its fallback (:mod:`~tor_exp.records.folder`), W&B second and never the only copy
(:mod:`~tor_exp.records.wandb_logger`); which config keys change a result is defined once in
:mod:`~tor_exp.records.keys`. Core layer: imports nothing of tor_exp but :mod:`tor_exp.errors`.
"""
from tor_exp.records.config import LoggerConfig
from tor_exp.records.keys import NON_RESULT_KEYS, config_hash, job_dirname
from tor_exp.records.results import load_results, run_metadata, write_results

__all__ = ["LoggerConfig", "NON_RESULT_KEYS", "config_hash", "job_dirname", "load_results", "run_metadata",
           "write_results"]

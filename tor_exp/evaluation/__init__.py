"""Evaluation through lm-eval: the LM backend ``TorExpLM`` over an in-memory model (``lm.py``), the one scorer
(``scoring.py``), offline fixture tasks (``tasks/``), the eval config schema and the runner.

Nothing here registers with lm-eval: the model name ``tor_exp`` builds its model from config names, which needs
the config layer above this package, so the entry point ``tor_exp.lm_eval`` registers it (``import
tor_exp.lm_eval``; docs/architecture.md). Kept import-light: the schema is imported by the CLI before anything
heavy is needed.
"""
from tor_exp.evaluation.config import ALIGNMENTS, FIXTURE_TASKS, PAPER_TASKS, EvalConfig

__all__ = ["ALIGNMENTS", "FIXTURE_TASKS", "PAPER_TASKS", "EvalConfig"]

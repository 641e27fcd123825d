"""Evaluation through lm-eval: the ``tor_exp`` LM backend (``tor_exp.evaluation.lm``, importing it registers the
model name with lm-eval), offline fixture tasks (``tasks/``), the eval config schema and the runner.

Kept import-light: the schema is imported by the CLI before anything heavy is needed.
"""
from tor_exp.evaluation.config import ALIGNMENTS, FIXTURE_TASKS, PAPER_TASKS, EvalConfig

__all__ = ["ALIGNMENTS", "FIXTURE_TASKS", "PAPER_TASKS", "EvalConfig"]

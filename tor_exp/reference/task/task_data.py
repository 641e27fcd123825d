"""``custom_dataset`` of this folder's task YAMLs: their ``data_files`` are read from this folder, not the cwd
(see tor_exp/evaluation/task_data.py)."""
from pathlib import Path

from tor_exp.evaluation.task_data import load_jsonl


def load(data_files, **metadata):
    return load_jsonl(Path(__file__).resolve().parent, data_files, **metadata)

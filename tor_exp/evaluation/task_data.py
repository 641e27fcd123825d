"""Bundled task data, found next to its task YAML and never through the working directory.

lm-eval resolves a relative ``dataset_kwargs.data_files`` against the cwd, so a task folder shipped inside the
package would load only from the folder it lives in. Each bundled task folder therefore has a small
``task_data.py`` whose ``load`` is the task's ``custom_dataset`` (``custom_dataset: !function task_data.load``;
lm-eval calls it as ``load(**metadata, **dataset_kwargs)`` when the task is built) and hands its own folder to
:func:`load_jsonl`. The tasks then load by name from any directory, from a checkout or an installed wheel, through
``python -m tor_exp`` and lm-eval's own command line alike, with no network (local JSON files only).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

DataFiles = Union[str, list, dict]


def resolve(data_files: DataFiles, folder: Union[str, Path]) -> DataFiles:
    """``data_files`` (a path, a list of paths or split → path(s)) with relative paths made absolute against
    ``folder``; a missing file fails here, naming the folder, rather than later inside ``datasets``."""
    if isinstance(data_files, dict):
        return {split: resolve(files, folder) for split, files in data_files.items()}
    if isinstance(data_files, (list, tuple)):
        return [resolve(f, folder) for f in data_files]
    path = Path(folder) / Path(data_files).expanduser()  # an absolute path stays as it is
    if not path.is_file():
        raise FileNotFoundError(f"task data file {data_files!r} not found in {folder}")
    return str(path)


def load_jsonl(folder: Union[str, Path], data_files: DataFiles, **metadata: Any):
    """The ``datasets.DatasetDict`` of the JSON-lines ``data_files`` of a task in ``folder``. ``metadata`` (the
    task's ``metadata`` block and lm-eval's ``--metadata`` / model arguments) is accepted and not used."""
    import datasets

    return datasets.load_dataset("json", data_files=resolve(data_files, folder))

"""Small trained reference Mamba-2 byte-level LM (corpus prep, training, evaluation, quality benchmark).

Why: random-weight models make quality numbers meaningless; this package ships a real (small) model
trained on CPU on the Python 3.11 documentation prose so token-reduction quality can be judged.
"""

from pathlib import Path

ASSETS_DIR: Path = Path(__file__).resolve().parent / "assets"
TASK_DIR: Path = Path(__file__).resolve().parent / "task"

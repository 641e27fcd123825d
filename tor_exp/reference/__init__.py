"""Small trained reference byte-level LMs, a Mamba-2 and a Nemotron-H-style hybrid (corpus prep, training,
evaluation, quality benchmark).

Why: random-weight models make quality numbers meaningless; this package ships a real (small) model
trained on CPU on the Python 3.11 documentation prose so token-reduction quality can be judged, on a pure SSM
and on a hybrid of Mamba-2, attention and MLP blocks.
"""

from pathlib import Path

ASSETS_DIR: Path = Path(__file__).resolve().parent / "assets"
TASK_DIR: Path = Path(__file__).resolve().parent / "task"
HYBRID_DIR: Path = Path(__file__).resolve().parent / "hybrid"

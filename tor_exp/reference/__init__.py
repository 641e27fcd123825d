"""Small trained reference byte-level LMs, a Mamba-2, a Nemotron-H-style hybrid and a Qwen3-Next-style Gated
DeltaNet hybrid (corpus prep, training, evaluation, quality benchmark).

Why: random-weight models make quality numbers meaningless; this package ships real (small) models trained on CPU
on the Python 3.11 documentation prose so token-reduction quality can be judged on three architectures: a pure SSM,
a hybrid of Mamba-2, attention and MLP blocks, and a hybrid of Gated DeltaNet and gated attention (3 : 1).
"""

from pathlib import Path

ASSETS_DIR: Path = Path(__file__).resolve().parent / "assets"
TASK_DIR: Path = Path(__file__).resolve().parent / "task"
HYBRID_DIR: Path = Path(__file__).resolve().parent / "hybrid"
GDN_DIR: Path = Path(__file__).resolve().parent / "gdn"

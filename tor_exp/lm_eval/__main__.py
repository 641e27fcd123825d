"""``python -m tor_exp.lm_eval <lm-eval's own arguments>``: see :func:`tor_exp.lm_eval.main`."""
from tor_exp.lm_eval import main

main()

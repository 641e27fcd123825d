"""tor_exp: post-training token reduction for State Space Model language models (Mamba, Mamba-2).

Quick use (ToMe-style patch API)::

    from tor_exp.models import load_model, patch, build_schedule
    from tor_exp.reduction import build_method
    model, tok = load_model(model_cfg)
    patch(model, build_method(reduction_cfg), build_schedule(reduction_cfg, model_cfg))
"""
__version__ = "0.1.0"

"""tor_exp's Hydra launcher plugin (the logic lives in tor_exp.launcher)."""

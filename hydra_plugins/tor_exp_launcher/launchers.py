"""The classes Hydra instantiates for launcher=slurm|local, and their schemas in Hydra's ConfigStore.

Hydra accepts launcher classes only from the ``hydra_plugins`` namespace package and imports every module in it
when it starts (that is when hydra-submitit-launcher stores its own schemas too). The behaviour is in
:mod:`tor_exp.launcher`; without hydra-submitit-launcher installed (the ``slurm`` extra) this module defines
nothing, so Hydra's scan stays quiet and launcher=slurm|local are simply unknown options.
"""
try:
    from tor_exp import launcher
except ModuleNotFoundError as err:  # hydra-submitit-launcher / submitit not installed
    if not (err.name or "").startswith(("hydra_plugins", "submitit")):
        raise
else:

    class SlurmLauncher(launcher.SlurmLauncher):
        __doc__ = launcher.SlurmLauncher.__doc__

    class LocalLauncher(launcher.LocalLauncher):
        __doc__ = launcher.LocalLauncher.__doc__

    launcher.register_launchers()

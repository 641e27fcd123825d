"""Ships the top-level conf/ inside the wheel as tor_exp/conf; editable installs read conf/ in place.

A wheel is built either from the source tree or from the sdist, which carries conf/ through MANIFEST.in; a build
that finds no conf/ stops here rather than producing a wheel that fails at run time without its configs.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConf(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # tor_exp.config.config_dir finds ../conf next to the package
        source = Path(__file__).resolve().parent / "conf"
        if not (source / "config.yaml").is_file():
            raise SystemExit(f"error: {source}/config.yaml not found: the configs must be next to setup.py "
                             "(an sdist carries them through MANIFEST.in)")
        shutil.copytree(source, Path(self.build_lib) / "tor_exp" / "conf", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))


setup(cmdclass={"build_py": BuildPyWithConf})

"""Ships the top-level conf/ inside the wheel as tor_exp/conf (editable installs read conf/ in place)."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConf(build_py):
    def run(self) -> None:
        super().run()
        source = Path(__file__).parent / "conf"
        target = Path(self.build_lib) / "tor_exp" / "conf"
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPyWithConf})

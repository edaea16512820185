"""Build hook: ship the data folders with the code. `policies/` and `migrations/` stay at the
repository's top level (where operators edit them); a wheel carries a copy under
`moderation/_data/`, which `moderation.settings.data_dir` finds when the package is installed
outside the repository."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA = ("policies", "migrations")


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        root = Path(__file__).resolve().parent
        for name in DATA:
            target = Path(self.build_lib) / "moderation" / "_data" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(root / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildWithData})

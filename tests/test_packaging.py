"""The package as pyproject.toml installs it: every folder of Python modules under a mapped package is
a listed package, so a wheel (not only an editable install) holds all of moeaccel."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_module_folder_is_a_listed_package():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, folders = set(setup["packages"]), setup["package-dir"]
    found = set()
    for package, folder in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package,) + relative))
    # a folder that is itself mapped is found from its own mapping too
    assert found <= listed, f"folders with modules that no package lists: {sorted(found - listed)}"

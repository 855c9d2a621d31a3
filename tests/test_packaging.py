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


def test_every_data_file_a_module_reads_is_package_data():
    """Non-Python files beside the modules (the register description, the ONNX models) are listed
    as package data of the package that holds them, so a wheel holds them."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    data, folders = setup.get("package-data", {}), setup["package-dir"]
    missing = []
    for package, folder in folders.items():
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in (".rdl", ".onnx"):
                continue
            parts = path.relative_to(ROOT / folder).parts
            # listed by the mapped package or by a package folder between it and the file
            listed = any(Path(*parts[k:]).match(pattern)
                         for k in range(len(parts))
                         for pattern in data.get(".".join((package,) + parts[:k]), []))
            if not listed:
                missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"data files no package-data pattern lists: {missing}"

"""The wheel installs `sot_core` and `sot_prefect` (the top-level tasks/ and flows/ folders renamed)
and nothing else at top level, with the `sot` console script, and pyproject lists every package."""
from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("sot_core", "flows", "tasks")
# Not part of the build: the venv, git, stores and run outputs, and build leftovers (a stale
# build/lib would otherwise slip files that no longer exist into the wheel).
IGNORED_AT_ROOT = {".venv", ".git", "build", "dist", "out", ".sot", ".sot-bench", ".whl", "shared"}


def setuptools_config() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def package_name(folder: Path) -> str:
    """The installed name of a source folder (relative to the repo), through [tool.setuptools.package-dir]."""
    dotted = ".".join(folder.parts)
    for package, source in setuptools_config().get("package-dir", {}).items():
        source = ".".join(Path(source).parts)
        if dotted == source or dotted.startswith(source + "."):
            return package + dotted[len(source):]
    return dotted


def source_packages() -> dict[str, Path]:
    """Installed package name -> folder, for every folder with an __init__.py under SOURCE_DIRS."""
    return {package_name(init.parent.relative_to(REPO)): init.parent
            for top in SOURCE_DIRS for init in (REPO / top).rglob("__init__.py")
            if "__pycache__" not in init.parts}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """A wheel built from a copy of the repository, so the build writes no build/ or *.egg-info
    into the working tree (and picks up no stale build/ from it)."""
    assert tuple(map(int, version("setuptools").split(".")[:2])) >= (77, 0), \
        "building without isolation needs setuptools>=77 in .venv (torch's pin brings it; see scripts/setup.sh)"
    root = tmp_path_factory.mktemp("packaging")
    src, dist = root / "src", root / "dist"

    def ignore(folder, names):
        skip = {n for n in names if n in ("__pycache__", ".pytest_cache") or n.endswith(".egg-info")}
        return skip | (IGNORED_AT_ROOT & set(names) if Path(folder) == REPO else set())

    shutil.copytree(REPO, src, ignore=ignore, symlinks=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), str(src)], check=True, timeout=300)
    (built,) = dist.glob("*.whl")
    with zipfile.ZipFile(built) as zf:
        yield zf


def test_wheel_top_level_is_sot_core_and_sot_prefect(wheel):
    top = {name.split("/", 1)[0] for name in wheel.namelist()}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert len(dist_info) == 1
    assert top - dist_info == {"sot_core", "sot_prefect"}


def test_wheel_holds_the_prefect_layer_and_the_console_script(wheel):
    names = set(wheel.namelist())
    assert {"sot_prefect/flows/cli.py", "sot_prefect/tasks/curation.py"} <= names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    assert dict(parser["console_scripts"]) == {"sot": "sot_prefect.flows.cli:main"}


def test_every_source_package_is_listed_in_pyproject():
    listed = set(setuptools_config()["packages"])
    found = source_packages()
    assert {"sot_core", "sot_core.curate", "sot_prefect.flows", "sot_prefect.tasks"} <= set(found)
    assert set(found) - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - set(found) == set(), "listed in pyproject but no such folder with an __init__.py"


def test_every_module_is_in_the_wheel(wheel):
    names = set(wheel.namelist())
    expected = {f"{package.replace('.', '/')}/{py.name}"
                for package, folder in source_packages().items() for py in folder.glob("*.py")}
    assert expected - names == set()

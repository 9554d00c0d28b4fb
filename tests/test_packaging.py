"""The distribution installs every part under `layerfleet.*` and nothing bare."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"protos/layerfleet": "layerfleet", "agent": "layerfleet.agent",
          "controller": "layerfleet.controller"}


def _package_folders() -> set[str]:
    names = set()
    for folder, package in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            names.add(".".join([package, *rel.parts]))
    return names


def test_every_package_folder_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert _package_folders() <= listed, f"add to pyproject packages: {_package_folders() - listed}"
    assert listed <= _package_folders(), f"listed but missing on disk: {listed - _package_folders()}"

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
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed, found = set(pyproject["tool"]["setuptools"]["packages"]), _package_folders()
    assert found <= listed, f"add to pyproject packages: {found - listed}"
    assert listed <= found, f"listed but missing on disk: {listed - found}"

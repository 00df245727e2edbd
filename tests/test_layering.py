"""cluster/ is the composition root: trainers/, tuning/ and serving/ never import it, and only
cluster/connect.py calls ray.init."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {"trainers": {"trainers"}, "tuning": {"trainers", "tuning"}, "serving": {"trainers", "serving"}}
PACKAGES = {"cluster", "trainers", "tuning", "serving"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_allowed_layers(package):
    for path in (ROOT / package).rglob("*.py"):
        bad = (_imports(path) & PACKAGES) - ALLOWED[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_only_connect_calls_ray_init():
    offenders = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "init"
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "ray"
                ):
                    offenders.append(str(path.relative_to(ROOT)))
    assert set(offenders) == {"cluster/connect.py"}

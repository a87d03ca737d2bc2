"""The dependency rule of DESIGN.md, checked on the source: leaves never import each other."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ROOT / "packages"
LEAVES = ("data", "models", "eval")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _sources(leaf: str) -> list[Path]:
    return sorted((PACKAGES / f"carebench-{leaf}" / "src").rglob("*.py"))


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_packages_never_import_each_other_or_the_cli(leaf: str) -> None:
    forbidden = {f"carebench_{other}" for other in (*LEAVES, "cli") if other != leaf}
    offenders = {str(p.relative_to(ROOT)): sorted(_imports(p) & forbidden) for p in _sources(leaf)}
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("leaf", LEAVES)
def test_libraries_do_not_render_or_print(leaf: str) -> None:
    offenders = []
    for path in _sources(leaf):
        if _imports(path) & {"typer", "rich"}:
            offenders.append(str(path.relative_to(ROOT)))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        calls = [
            n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print"
        ]
        if calls:
            offenders.append(f"{path.relative_to(ROOT)}: print()")
    assert offenders == []


def test_eval_never_imports_torch() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in _sources("eval") if "torch" in _imports(p)]
    assert offenders == []


def test_data_imports_torch_only_in_its_torch_subpackage() -> None:
    torch_dir = PACKAGES / "carebench-data" / "src" / "carebench_data" / "torch"
    offenders = [
        str(p.relative_to(ROOT))
        for p in _sources("data")
        if "torch" in _imports(p) and torch_dir not in p.parents
    ]
    assert offenders == []


def test_no_pickle_anywhere() -> None:
    offenders = []
    for path in sorted(PACKAGES.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "pickle" in _imports(path) or re.search(r"torch\.load\((?![^)]*weights_only=True)", text):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_versions_move_in_lockstep_and_every_package_is_typed() -> None:
    versions = {}
    for package_dir in sorted(PACKAGES.iterdir()):
        name = package_dir.name.replace("-", "_")
        init = package_dir / "src" / name / "__init__.py"
        match = re.search(r'^__version__ = "([^"]+)"', init.read_text(encoding="utf-8"), re.MULTILINE)
        assert match, f"{init} has no __version__"
        versions[package_dir.name] = match.group(1)
        assert (package_dir / "src" / name / "py.typed").exists()
        project = tomllib.loads((package_dir / "pyproject.toml").read_text(encoding="utf-8"))
        assert project["build-system"]["build-backend"] == "hatchling.build"
        assert set(project) <= {"build-system", "project", "tool"}
        assert set(project.get("tool", {})) <= {"hatch"}, "tool config belongs in the root pyproject.toml"
    assert len(set(versions.values())) == 1, versions
    cli = tomllib.loads((PACKAGES / "carebench-cli" / "pyproject.toml").read_text(encoding="utf-8"))
    pinned = [dep for dep in cli["project"]["dependencies"] if dep.startswith("carebench-")]
    assert all(dep.endswith(f"=={versions['carebench-cli']}") for dep in pinned), pinned

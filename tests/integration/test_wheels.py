"""The four packages build as wheels and sdists with complete metadata; the eval wheel works alone.

The wheels are built with hatchling, the build backend `hatch build` runs, from each package folder.
The eval wheel is then installed (not editable) into a fresh virtual environment without system site
packages, its dependencies (numpy, polars, scikit-learn) fetched by pip as a user's would be, and it
scores the bundled example file from a Python started in isolated mode (`-I`: no PYTHONPATH, no
current directory), so the repository's source tree cannot stand in for the installed package.
"""

from __future__ import annotations

import email.parser
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import tomllib
import venv
import zipfile
from pathlib import Path

import polars as pl
import pytest

import carebench_eval as ce

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("carebench-data", "carebench-models", "carebench-eval", "carebench-cli")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("hatchling") is None,
        reason="building wheels needs hatchling: pip install hatchling",
    ),
]


def _module(package: str) -> str:
    return package.replace("-", "_")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    for package in PACKAGES:
        subprocess.run(
            [sys.executable, "-m", "hatchling", "build", "-d", str(out)],
            cwd=ROOT / "packages" / package,
            check=True,
            capture_output=True,
        )
    return out


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(archive.read(name).decode("utf-8"))


def test_four_wheels_and_sdists(dist: Path) -> None:
    version = ce.__version__
    assert sorted(p.name for p in dist.iterdir()) == sorted(
        [f"{_module(p)}-{version}-py3-none-any.whl" for p in PACKAGES]
        + [f"{_module(p)}-{version}.tar.gz" for p in PACKAGES]
    )
    for package in PACKAGES:
        module = _module(package)
        with zipfile.ZipFile(dist / f"{module}-{version}-py3-none-any.whl") as archive:
            names = archive.namelist()
        assert f"{module}/py.typed" in names and f"{module}/__init__.py" in names
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
        assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
        with tarfile.open(dist / f"{module}-{version}.tar.gz") as archive:
            members = {m.name.split("/", 1)[1] for m in archive.getmembers() if "/" in m.name}
        assert {"README.md", "LICENSE", "pyproject.toml", f"src/{module}/__init__.py"} <= members
    with zipfile.ZipFile(dist / f"carebench_eval-{version}-py3-none-any.whl") as archive:
        names = archive.namelist()
    assert (
        "carebench_eval/examples/predictions_example.csv" in names and "carebench_eval/defaults.toml" in names
    )


@pytest.mark.parametrize("package", PACKAGES)
def test_metadata_is_complete(dist: Path, package: str) -> None:
    meta = _metadata(dist / f"{_module(package)}-{ce.__version__}-py3-none-any.whl")
    readme = (ROOT / "packages" / package / "README.md").read_text(encoding="utf-8")
    assert meta["Summary"] and len(meta["Summary"]) > 40
    assert (
        meta.get_payload().strip() == readme.strip() and meta["Description-Content-Type"] == "text/markdown"
    )
    assert "](../" not in readme, "relative links break on the package index"
    assert meta["License-Expression"] == "MIT" and meta["License-File"] == "LICENSE"
    assert meta["Requires-Python"] == ">=3.11"
    classifiers = meta.get_all("Classifier")
    assert "Programming Language :: Python :: 3.11" in classifiers and "Typing :: Typed" in classifiers
    assert any(c.startswith("Topic :: Scientific/Engineering") for c in classifiers)
    urls = dict(url.split(", ", 1) for url in meta.get_all("Project-URL"))
    assert urls["Paper"] == "https://arxiv.org/abs/2602.23614"
    assert meta["Author"]
    declared = tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]
    assert len([r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]) == len(declared)


def test_eval_wheel_alone_scores_the_example(dist: Path, tmp_path: Path) -> None:
    wheel = dist / f"carebench_eval-{ce.__version__}-py3-none-any.whl"
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        check=True,
        capture_output=True,
        env=environment,
        cwd=tmp_path,
    )
    probe = (
        "import importlib.util, json, carebench_eval as ce\n"
        "print(json.dumps({'file': ce.__file__, 'example': str(ce.example_predictions_path()),"
        " 'others': [m for m in ('torch', 'carebench_data', 'carebench_models', 'carebench_cli')"
        " if importlib.util.find_spec(m)]}))"
    )
    result = subprocess.run(
        [str(python), "-I", "-c", probe],
        check=True,
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
    )
    installed = json.loads(result.stdout)
    site_packages = next((env_dir / "lib").glob("python3*/site-packages"))
    assert Path(installed["file"]).is_relative_to(site_packages), installed
    assert not Path(installed["file"]).is_relative_to(ROOT)
    assert installed["others"] == []  # installed alone: no torch, no other carebench package

    scores = tmp_path / "scores.csv"
    subprocess.run(
        [str(python), "-I", "-m", "carebench_eval", "score", installed["example"], "-o", str(scores)],
        check=True,
        capture_output=True,
        env=environment,
        cwd=tmp_path,
    )
    from_wheel = pl.read_csv(scores)
    # The same computation in this process, from the repository's source, gives the same table.
    expected = tmp_path / "expected.csv"
    ce.write_results(ce.score(ce.read_predictions(ce.example_predictions_path())), expected)
    assert from_wheel.equals(pl.read_csv(expected))
    auroc = from_wheel.filter(pl.col("metric") == "auroc_score", pl.col("task") == "mortality")
    assert auroc.height > 0 and auroc["ci_low"].is_not_null().all()

"""`data build --out`: never replaces an input or a folder that is not a carebench dataset; a killed
build leaves a lock and partial folders that the next build takes over and removes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from carebench_cli.main import app
from carebench_data.outputs import OutputDirectoryError, atomic_directory, check_output_dir
from carebench_data.testing.raw import RawTreeTruth, write_raw_tree


@pytest.fixture
def tree(tmp_path: Path) -> RawTreeTruth:
    return write_raw_tree(tmp_path / "raw")


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def _build(tree: RawTreeTruth, tmp_path: Path, out: Path, *extra: str):
    config = tmp_path / "build.toml"
    config.write_text("[cxr]\nworkers = 1\nmax_failure_fraction = 0.5\n")
    arguments = ["data", "build", "--mimic-iv", str(tree.mimic_iv), "--mimic-cxr", str(tree.mimic_cxr)]
    return CliRunner().invoke(app, [*arguments, "--config", str(config), "--out", str(out), *extra])


@pytest.mark.parametrize(
    ("where", "overwrite", "message"),
    [
        ("cxr_root", True, "is the input"),
        ("cxr_root", False, "is the input"),
        ("mimic_root", True, "is the input"),
        ("inside_cxr_files", True, "lies inside the input"),
        ("inside_mimic_hosp", False, "lies inside the input"),
        ("raw_parent", True, "contains the input"),
        ("symlink_to_cxr", True, "is the input"),
    ],
)
def test_build_never_writes_into_or_over_an_input(tree, tmp_path, where, overwrite, message):
    targets = {
        "cxr_root": tree.mimic_cxr,
        "mimic_root": tree.mimic_iv,
        "inside_cxr_files": tree.mimic_cxr / "files" / "dataset",
        "inside_mimic_hosp": tree.mimic_iv / "hosp" / "dataset",
        "raw_parent": tmp_path / "raw",
        "symlink_to_cxr": tmp_path / "link",
    }
    (tmp_path / "link").symlink_to(tree.mimic_cxr, target_is_directory=True)
    before = _snapshot(tmp_path / "raw")
    result = _build(tree, tmp_path, targets[where], *(["--overwrite"] if overwrite else []))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert _snapshot(tmp_path / "raw") == before


def test_overwrite_refuses_a_folder_that_is_not_a_dataset(tree, tmp_path):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("precious")
    result = _build(tree, tmp_path, folder, "--overwrite")
    assert result.exit_code == 2, result.output
    assert "is not a carebench dataset" in result.output
    assert (folder / "chapter1.tex").read_text() == "precious"
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "manifest.json").write_text("{not a manifest")
    assert _build(tree, tmp_path, fake, "--overwrite").exit_code == 2
    assert (fake / "manifest.json").exists()


def test_out_that_is_a_file_is_a_one_line_error(tree, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep")
    result = _build(tree, tmp_path, target, "--overwrite")
    assert result.exit_code == 2 and "is not a directory" in result.output
    assert target.read_text() == "keep"


def test_overwrite_replaces_a_dataset_and_an_empty_folder(tree, tmp_path):
    out = tmp_path / "dataset"
    out.mkdir()
    assert _build(tree, tmp_path, out, "--overwrite").exit_code == 0
    first = json.loads((out / "manifest.json").read_text())["content_hash"]
    assert _build(tree, tmp_path, out, "--overwrite").exit_code == 0
    assert json.loads((out / "manifest.json").read_text())["content_hash"] == first


_KILLED_BUILD = """
import sys, time
from pathlib import Path
import carebench_data.build as build
from carebench_data.config import BuildConfig

def stuck(out, *, staging, **_):
    (out / "half-written.parquet").write_bytes(b"x" * 100)
    (staging / "chunk.parquet").write_bytes(b"y")
    Path(sys.argv[4]).touch()
    time.sleep(600)

build._build_into = stuck
config = BuildConfig.from_toml(
    None, mimic_iv=sys.argv[1], mimic_cxr=sys.argv[2], out=sys.argv[3], **{"cxr.workers": 1}
)
build.build_dataset(config)
"""


def test_a_killed_build_does_not_block_its_rerun(tree, tmp_path):
    out = tmp_path / "dataset"
    script = tmp_path / "killed_build.py"
    script.write_text(textwrap.dedent(_KILLED_BUILD))
    ready = tmp_path / "ready"
    process = subprocess.Popen(
        [sys.executable, str(script), str(tree.mimic_iv), str(tree.mimic_cxr), str(out), str(ready)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert process.poll() is None, "the build ended before it could be killed"
            assert time.monotonic() < deadline, "the build did not start"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    lock = tmp_path / ".dataset.lock"
    assert json.loads(lock.read_text())["pid"] == process.pid
    assert list(tmp_path.glob(".dataset.partial-*"))
    assert list((tmp_path / ".carebench-work").glob(".dataset-*.partial-*"))

    result = _build(tree, tmp_path, out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert "taking over the lock" in result.output and f"pid {process.pid}" in result.output
    assert (out / "manifest.json").is_file() and not (out / "half-written.parquet").exists()
    assert not lock.exists()
    assert not list(tmp_path.glob(".dataset.*"))
    work = tmp_path / ".carebench-work"
    assert not work.exists() or not [p for p in work.rglob("*") if "partial" in p.name]


def test_a_swap_interrupted_between_its_two_renames_is_restored(tmp_path):
    target = tmp_path / "dataset"
    aside = tmp_path / ".dataset.old-1234"
    aside.mkdir()
    (aside / "manifest.json").write_text("old")
    with (
        pytest.raises(OutputDirectoryError, match="already exists"),
        atomic_directory(target, overwrite=False),
    ):
        pass
    assert (target / "manifest.json").read_text() == "old" and not aside.exists()


def test_check_output_dir_allows_new_and_own_directories(tmp_path):
    data = tmp_path / "inputs"
    data.mkdir()
    check_output_dir(tmp_path / "new", inputs=[data])
    check_output_dir(tmp_path / "sibling", inputs=[data, None], replace=True)
    own = tmp_path / "own"
    own.mkdir()
    (own / "marker").touch()
    check_output_dir(own, replace=True, is_ours=lambda path: (path / "marker").exists())
    with pytest.raises(OutputDirectoryError, match="not a carebench report"):
        check_output_dir(own, replace=True, is_ours=lambda path: False, what="report")


def test_a_waiting_writer_takes_its_turn_after_the_live_one(tmp_path, monkeypatch):
    import threading

    import carebench_data.outputs as outputs
    from carebench_data.locks import LockHeldError, acquire_lock

    target = tmp_path / "report"
    held = acquire_lock(tmp_path / ".report.lock", purpose="the other writer")
    refused = threading.Event()

    def acquire(*args, **kwargs):
        try:
            return acquire_lock(*args, **kwargs)
        except LockHeldError:
            refused.set()
            raise

    monkeypatch.setattr(outputs, "acquire_lock", acquire)
    monkeypatch.setattr(outputs, "_WAIT_SECONDS", 0.01)

    def write() -> None:
        with atomic_directory(target, overwrite=True, wait=True) as partial:
            (partial / "index.html").write_text("second")

    writer = threading.Thread(target=write)
    writer.start()
    assert refused.wait(timeout=60)
    assert not target.exists()  # it waits while the lock is held
    held.release()
    writer.join(timeout=60)
    assert (target / "index.html").read_text() == "second"
    # Without `wait` (a dataset build), a live writer is an error instead.
    held = acquire_lock(tmp_path / ".dataset.lock", purpose="a build")
    with (
        pytest.raises(OutputDirectoryError, match="another process is writing"),
        atomic_directory(tmp_path / "dataset", overwrite=False),
    ):
        pass
    held.release()

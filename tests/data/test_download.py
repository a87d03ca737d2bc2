"""`fetch_mimic_iv_demo` against a release folder served from a file path (no network in tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from carebench_data.download import (
    SUMS_FILE,
    ChecksumError,
    DownloadError,
    demo_files,
    fetch_mimic_iv_demo,
    parse_sums,
)
from carebench_data.manifest import sha256_file
from carebench_data.testing.raw import write_raw_tree


def _release(tmp_path: Path) -> Path:
    """The hand-written raw tree laid out as a release: its files plus SHA256SUMS.txt and a licence."""
    root = write_raw_tree(tmp_path / "raw", marker=False).mimic_iv
    (root / "LICENSE.txt").write_text("Open Data Commons Open Database License\n")
    (root / "hosp" / "transfers.csv.gz").write_bytes(b"listed, never read")
    listed = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    (root / SUMS_FILE).write_text("".join(f"{sha256_file(root / p)}  {p}\n" for p in listed))
    return root


def test_fetches_the_tables_carebench_reads_with_their_sums(tmp_path: Path) -> None:
    release = _release(tmp_path)
    steps: list[tuple[int, int]] = []
    dest = fetch_mimic_iv_demo(
        tmp_path / "demo", base_url=release.as_uri(), progress=lambda done, total: steps.append((done, total))
    )
    fetched = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert fetched == sorted([*demo_files(), "LICENSE.txt", SUMS_FILE])  # no README listed, no transfers
    for relpath in demo_files():
        assert (dest / relpath).read_bytes() == (release / relpath).read_bytes()
    assert parse_sums((dest / SUMS_FILE).read_text()) == parse_sums((release / SUMS_FILE).read_text())
    assert steps[-1] == (len(demo_files()) + 1, len(demo_files()) + 1)


def test_a_checksum_mismatch_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    release = _release(tmp_path)
    chart = release / "icu" / "chartevents.csv.gz"
    chart.write_bytes(chart.read_bytes() + b"\0")
    with pytest.raises(ChecksumError) as error:
        fetch_mimic_iv_demo(tmp_path / "demo", base_url=release.as_uri())
    message = str(error.value)
    assert "\n" not in message and message.startswith("icu/chartevents.csv.gz: SHA-256")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no demo/, no .demo.partial-*


def test_refusals(tmp_path: Path) -> None:
    release = _release(tmp_path)
    occupied = tmp_path / "occupied"
    (occupied / "hosp").mkdir(parents=True)
    with pytest.raises(DownloadError, match="already exists and is not empty"):
        fetch_mimic_iv_demo(occupied, base_url=release.as_uri())
    with pytest.raises(DownloadError, match=r"cannot fetch .*SHA256SUMS\.txt"):
        fetch_mimic_iv_demo(tmp_path / "demo", base_url=(tmp_path / "nowhere").as_uri())
    with pytest.raises(DownloadError, match="unsupported URL"):
        fetch_mimic_iv_demo(tmp_path / "demo", base_url="ftp://example.org/mimic-iv-demo/2.2/")
    sums = release / SUMS_FILE
    sums.write_text("".join(line + "\n" for line in sums.read_text().splitlines() if "patients" not in line))
    with pytest.raises(DownloadError, match=r"does not list hosp/patients\.csv\.gz"):
        fetch_mimic_iv_demo(tmp_path / "demo", base_url=release.as_uri())
    assert not (tmp_path / "demo").exists()

"""Reading raw inputs and bad-input handling: formats, chunking, and clear errors with nothing half-written."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from carebench_data.build import build_dataset
from carebench_data.config import BuildConfig, ConfigError, CxrConfig
from carebench_data.convert import convert_raw
from carebench_data.cxr import CxrError
from carebench_data.errors import CarebenchDataError
from carebench_data.events import BadRowsError
from carebench_data.manifest import DatasetExistsError, sha256_file
from carebench_data.raw import (
    MIMIC_IV_TABLES,
    CorruptInputError,
    MissingColumnError,
    MissingTableError,
    VersionError,
    iter_csv_blocks,
    resolve_table,
)
from carebench_data.registry import RegistryError
from carebench_data.testing.raw import RawTreeTruth, write_raw_tree
from carebench_data.verify import verify_raw


def _config(truth: RawTreeTruth, out: Path, **cxr) -> BuildConfig:
    return BuildConfig(
        mimic_iv=truth.mimic_iv,
        mimic_cxr=truth.mimic_cxr,
        out=out,
        cxr=CxrConfig(workers=1, **{"max_failure_fraction": 0.5, **cxr}),
    )


@pytest.fixture
def tree(tmp_path: Path) -> RawTreeTruth:
    return write_raw_tree(tmp_path / "raw")


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    assert leftovers == []
    work = out.parent / ".carebench-work"
    # Only the staging cache (complete entries, outside the dataset) may outlive a failed build.
    if work.exists():
        assert {p.name for p in work.iterdir()} <= {"staging-cache"}
        assert not [p for p in work.rglob("*") if "partial" in p.name]


def _rewrite_gz(path: Path, transform) -> None:
    text = gzip.decompress(path.read_bytes()).decode()
    path.write_bytes(gzip.compress(transform(text).encode(), mtime=0))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_formats_give_identical_datasets(tmp_path: Path, fmt: str) -> None:
    reference = write_raw_tree(tmp_path / "gz")
    other = write_raw_tree(tmp_path / fmt, fmt=fmt)
    first = json.loads((build_dataset(_config(reference, tmp_path / "a")) / "manifest.json").read_text())
    second = json.loads((build_dataset(_config(other, tmp_path / "b")) / "manifest.json").read_text())
    assert first["files"] == second["files"]
    assert first["content_hash"] == second["content_hash"]
    assert {i["format"] for i in second["source"]["inputs"]} == {fmt}


def test_converted_parquet_tree_builds_the_same_dataset(tmp_path: Path) -> None:
    tree = write_raw_tree(tmp_path / "raw")
    rows = convert_raw(tree.mimic_iv, tmp_path / "pq", mimic_cxr=tree.mimic_cxr, cxr_out=tmp_path / "cxr")
    assert rows["icu/icustays"] == 50 and rows["mimic-cxr-2.0.0-metadata"] == 8
    assert pl.read_parquet_schema(tmp_path / "pq" / "icu" / "chartevents.parquet")[
        "charttime"
    ] == pl.Datetime("us")
    converted = RawTreeTruth(**{**tree.__dict__, "mimic_iv": tmp_path / "pq", "mimic_cxr": tmp_path / "cxr"})
    first = json.loads((build_dataset(_config(tree, tmp_path / "a")) / "manifest.json").read_text())
    second = json.loads((build_dataset(_config(converted, tmp_path / "b")) / "manifest.json").read_text())
    assert first["content_hash"] == second["content_hash"]
    assert second["source"]["fingerprint"]["detected"] == "2.2"


def test_quoted_line_breaks_across_block_boundaries(tmp_path: Path) -> None:
    rows = [f'{i},"line one\nline ""{i}"", two",{i * 1.5}' for i in range(500)]
    path = tmp_path / "icu" / "d_items.csv.gz"
    path.parent.mkdir()
    path.write_bytes(
        gzip.compress(
            ("itemid,label,linksto,category,unitname\n" + "\n".join(r + ",x,y" for r in rows) + "\n").encode()
        )
    )
    resolved = resolve_table(tmp_path, MIMIC_IV_TABLES["d_items"])
    assert resolved is not None
    blocks = list(iter_csv_blocks(resolved, columns=["itemid", "label", "linksto"], chunk_bytes=97))
    assert len(blocks) > 10
    frame = pl.concat(blocks)
    assert frame["itemid"].to_list() == [str(i) for i in range(500)]
    assert frame["label"][7] == 'line one\nline "7", two'


def test_truncated_gzip_is_a_clear_error_and_nothing_is_written(tree: RawTreeTruth, tmp_path: Path) -> None:
    path = tree.mimic_iv / "icu" / "chartevents.csv.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "dataset"
    with pytest.raises(
        CorruptInputError, match=r"chartevents\.csv\.gz: gzip stream truncated at decompressed byte \d+"
    ):
        build_dataset(_config(tree, out))
    _assert_nothing_written(out)


def test_corrupt_gzip_is_a_clear_error(tree: RawTreeTruth, tmp_path: Path) -> None:
    path = tree.mimic_iv / "icu" / "chartevents.csv.gz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptInputError, match="chartevents"):
        build_dataset(_config(tree, tmp_path / "dataset"))
    _assert_nothing_written(tmp_path / "dataset")


def test_missing_file_names_the_table_and_the_names_tried(tree: RawTreeTruth, tmp_path: Path) -> None:
    (tree.mimic_iv / "hosp" / "diagnoses_icd.csv.gz").unlink()
    with pytest.raises(
        MissingTableError,
        match=r"diagnoses_icd.*tried diagnoses_icd\.parquet, diagnoses_icd\.csv, diagnoses_icd\.csv\.gz",
    ):
        build_dataset(_config(tree, tmp_path / "dataset"))
    _assert_nothing_written(tmp_path / "dataset")


def test_missing_column_names_file_and_column(tree: RawTreeTruth, tmp_path: Path) -> None:
    _rewrite_gz(
        tree.mimic_iv / "icu" / "chartevents.csv.gz",
        lambda text: text.replace(",valuenum,", ",value_num,", 1),
    )
    with pytest.raises(MissingColumnError, match=r"chartevents\.csv\.gz: missing column\(s\) valuenum"):
        build_dataset(_config(tree, tmp_path / "dataset"))


def test_v10_ethnicity_column_suggests_compatibility_mode(tree: RawTreeTruth, tmp_path: Path) -> None:
    _rewrite_gz(
        tree.mimic_iv / "hosp" / "admissions.csv.gz", lambda text: text.replace(",race,", ",ethnicity,", 1)
    )
    with pytest.raises(MissingColumnError, match=r"v1\.0"):
        build_dataset(_config(tree, tmp_path / "dataset"))


def test_wrong_or_unknown_version(tmp_path: Path) -> None:
    tree = write_raw_tree(tmp_path / "raw", marker=False)
    # 50 icustays rows is no first-class release: refused unless allowed.
    with pytest.raises(VersionError, match="allow_unverified_version"):
        build_dataset(_config(tree, tmp_path / "a"))
    declared = BuildConfig(
        mimic_iv=tree.mimic_iv,
        out=tmp_path / "b",
        mimic_iv_version="3.1",
        cxr=CxrConfig(enabled=False),
        allow_unverified_version=True,
    )
    assert (
        json.loads((build_dataset(declared) / "manifest.json").read_text())["source"]["mimic_iv_version"]
        == "3.1"
    )
    _rewrite_gz(
        tree.mimic_iv / "icu" / "chartevents.csv.gz", lambda text: text.replace(",caregiver_id,", ",cg,", 1)
    )
    with pytest.raises(VersionError, match=r"look like 2\.0/2\.1"):
        build_dataset(
            BuildConfig(
                mimic_iv=tree.mimic_iv,
                out=tmp_path / "c",
                mimic_iv_version="2.2",
                cxr=CxrConfig(enabled=False),
            )
        )


def test_synthetic_marker_counts_are_checked(tree: RawTreeTruth, tmp_path: Path) -> None:
    marker = tree.mimic_iv / "SYNTHETIC.json"
    content = json.loads(marker.read_text())
    content["row_counts"]["icu/icustays"] = 7
    marker.write_text(json.dumps(content))
    with pytest.raises(VersionError, match=r"SYNTHETIC\.json declares 7"):
        build_dataset(_config(tree, tmp_path / "dataset"))


def test_unreadable_rows_are_counted_then_fail_above_the_threshold(
    tree: RawTreeTruth, tmp_path: Path
) -> None:
    path = tree.mimic_iv / "icu" / "chartevents.csv.gz"
    original = path.read_bytes()
    lines = gzip.decompress(original).decode().splitlines()
    # One row with a garbled timestamp: counted; the build goes on with max_bad_row_fraction raised.
    garbled = [*lines[:5], lines[5].replace("2180-", "21x0-", 1), *lines[6:]]
    path.write_bytes(gzip.compress(("\n".join(garbled) + "\n").encode()))
    lenient = BuildConfig.from_dict(
        {
            "mimic_iv": str(tree.mimic_iv),
            "mimic_cxr": str(tree.mimic_cxr),
            "out": str(tmp_path / "ok"),
            "cxr": {"workers": 1, "max_failure_fraction": 0.5},
            "build": {"max_bad_row_fraction": 0.01},
        }
    )
    manifest = json.loads((build_dataset(lenient) / "manifest.json").read_text())
    assert manifest["counts"]["events"]["chartevents"]["bad_values"] == {"charttime": 1}
    with pytest.raises(BadRowsError, match=r"chartevents\.csv\.gz: 1 unparseable values"):
        build_dataset(_config(tree, tmp_path / "strict"))
    _assert_nothing_written(tmp_path / "strict")


def test_row_with_extra_fields_is_a_structural_error(tree: RawTreeTruth, tmp_path: Path) -> None:
    _rewrite_gz(
        tree.mimic_iv / "icu" / "chartevents.csv.gz", lambda text: text + "1,2,3,4,5,6,7,8,9,10,11,12\n"
    )
    with pytest.raises(CorruptInputError, match="malformed CSV"):
        build_dataset(_config(tree, tmp_path / "dataset"))


def test_corrupt_jpegs_above_the_failure_fraction_fail_the_build(tree: RawTreeTruth, tmp_path: Path) -> None:
    with pytest.raises(CxrError, match=r"2 of 5 images .* missing or corrupt"):
        build_dataset(_config(tree, tmp_path / "dataset", max_failure_fraction=0.01))
    _assert_nothing_written(tmp_path / "dataset")


def test_wrong_image_root_fails_in_the_preflight(tree: RawTreeTruth, tmp_path: Path) -> None:
    shutil.rmtree(tree.mimic_cxr / "files")
    with pytest.raises(CxrError, match="none of the first 5 candidate images exists"):
        build_dataset(_config(tree, tmp_path / "dataset"))


def test_registry_itemid_missing_from_the_dictionary(tree: RawTreeTruth, tmp_path: Path) -> None:
    _rewrite_gz(
        tree.mimic_iv / "hosp" / "d_labitems.csv.gz",
        lambda text: text.replace("50820,pH,Blood", "50820,pH,Urine"),
    )
    _rewrite_gz(
        tree.mimic_iv / "icu" / "d_items.csv.gz",
        lambda text: "\n".join(line for line in text.splitlines() if not line.startswith("220045,")) + "\n",
    )
    with pytest.raises(
        RegistryError, match=r"220045 \(heart_rate\) not in d_items; 50820 \(ph\) has fluid 'Urine'"
    ):
        build_dataset(_config(tree, tmp_path / "dataset"))


def test_existing_target_lock_and_overwrite(tree: RawTreeTruth, tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    build_dataset(_config(tree, out))
    with pytest.raises(DatasetExistsError, match="--overwrite"):
        build_dataset(_config(tree, out))
    lock = tmp_path / ".dataset.lock"
    lock.write_text("1")
    overwrite = BuildConfig.from_toml(
        None,
        mimic_iv=str(tree.mimic_iv),
        mimic_cxr=str(tree.mimic_cxr),
        out=str(out),
        **{"build.overwrite": True, "cxr.workers": 1, "cxr.max_failure_fraction": 0.5},
    )
    with pytest.raises(DatasetExistsError, match="another process is writing"):
        build_dataset(overwrite)
    lock.unlink()
    before = (out / "manifest.json").read_text()
    build_dataset(overwrite)
    assert (
        json.loads((out / "manifest.json").read_text())["content_hash"] == json.loads(before)["content_hash"]
    )
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".dataset")) == []


def test_config_rejects_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"build configuration: unknown key.*cxr\.view_list.* in \[cxr\]"):
        BuildConfig.from_dict({"mimic_iv": "x", "out": "y", "cxr": {"view_list": ["AP"]}})
    with pytest.raises(ConfigError, match="min_los_hours"):
        BuildConfig.from_dict(
            {"mimic_iv": "x", "out": "y", "mimic_cxr": "z", "cohort": {"min_los_hours": 24}}
        )
    with pytest.raises(ConfigError, match="--no-cxr"):
        BuildConfig.from_dict({"mimic_iv": "x", "out": "y"})
    toml = tmp_path / "build.toml"
    toml.write_text('mimic_iv_version = "2.2"\n[cxr]\nenabled = false\nlookback_hours = 6\n')
    config = BuildConfig.from_toml(toml, mimic_iv="a", out="b", **{"cxr.lookback_hours": 12})
    assert (config.mimic_iv_version, config.cxr.enabled, config.cxr.lookback_hours) == ("2.2", False, 12)
    assert issubclass(ConfigError, CarebenchDataError)


def test_v10_layout_in_compatibility_mode(tree: RawTreeTruth, tmp_path: Path) -> None:
    core = tree.mimic_iv / "core"
    core.mkdir()
    for table in ("patients", "admissions"):
        (tree.mimic_iv / "hosp" / f"{table}.csv.gz").rename(core / f"{table}.csv.gz")
    _rewrite_gz(core / "admissions.csv.gz", lambda text: text.replace(",race,", ",ethnicity,", 1))
    config = BuildConfig(
        mimic_iv=tree.mimic_iv, out=tmp_path / "v10", mimic_iv_version="1.0", cxr=CxrConfig(enabled=False)
    )
    out = build_dataset(config)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["mimic_iv_version"] == "1.0"
    assert manifest["source"]["fingerprint"]["evidence"] == ["core/ present"]
    stays = pl.read_parquet(out / "stays.parquet")
    assert stays["stay_id"].to_list() == tree.cohort_stay_ids
    assert set(stays["race"]) == {"WHITE", "OTHER"}
    with pytest.raises(VersionError, match=r"look like 1\.0"):
        build_dataset(
            BuildConfig(
                mimic_iv=tree.mimic_iv,
                out=tmp_path / "x",
                mimic_iv_version="2.2",
                cxr=CxrConfig(enabled=False),
            )
        )


def test_staging_cache_hit_miss_and_off(tree: RawTreeTruth, tmp_path: Path) -> None:
    first = json.loads((build_dataset(_config(tree, tmp_path / "a")) / "manifest.json").read_text())
    second = json.loads((build_dataset(_config(tree, tmp_path / "b")) / "manifest.json").read_text())
    assert (first["build"]["staging_cache"], second["build"]["staging_cache"]) == ("miss", "hit")
    assert first["content_hash"] == second["content_hash"]
    assert first["counts"]["events"] == second["counts"]["events"]
    chart = tree.mimic_iv / "icu" / "chartevents.csv.gz"
    chart.touch()  # a changed input identity invalidates the entry
    third = json.loads((build_dataset(_config(tree, tmp_path / "c")) / "manifest.json").read_text())
    assert third["build"]["staging_cache"] == "miss"
    assert len(list((tmp_path / ".carebench-work" / "staging-cache").iterdir())) == 1
    off = BuildConfig.from_toml(
        None,
        mimic_iv=str(tree.mimic_iv),
        out=str(tmp_path / "d"),
        **{"cxr.enabled": False, "build.cache": False},
    )
    assert json.loads((build_dataset(off) / "manifest.json").read_text())["build"]["staging_cache"] == "off"


def test_verify_raw_counts_checksums_and_image_probe(tree: RawTreeTruth) -> None:
    files = sorted(p for p in tree.mimic_iv.rglob("*.csv.gz"))
    (tree.mimic_iv / "SHA256SUMS.txt").write_text(
        "".join(f"{sha256_file(p)}  {p.relative_to(tree.mimic_iv).as_posix()}\n" for p in files)
    )
    report = verify_raw(tree.mimic_iv, "2.2", mimic_cxr=tree.mimic_cxr, counts=True, checksums=False)
    assert report.problems == [] and "row counts" in report.checked and "image layout" in report.checked
    (tree.mimic_iv / "SHA256SUMS.txt").write_text(
        (tree.mimic_iv / "SHA256SUMS.txt").read_text() + "0" * 64 + "  hosp/extra.csv.gz\n"
    )
    marker = tree.mimic_iv / "SYNTHETIC.json"
    content = json.loads(marker.read_text())
    content["row_counts"]["icu/icustays"] = 51
    marker.write_text(json.dumps(content))
    _rewrite_gz(
        tree.mimic_iv / "icu" / "d_items.csv.gz", lambda text: text + "999999,x,x,chartevents,x,x,x,,\n"
    )
    report = verify_raw(
        tree.mimic_iv, mimic_cxr=tree.mimic_cxr, counts=True, checksums=True, raise_on_error=False
    )
    assert any("icustays" in p and "expected 51" in p for p in report.problems)
    # a listed file that carebench never reads is skipped, not judged missing
    assert not any("extra.csv.gz" in p for p in report.problems)
    assert str(tree.mimic_iv / "hosp/extra.csv.gz") in report.info["checksums"]["skipped"]
    assert any("d_items.csv.gz: SHA-256 mismatch" in p for p in report.problems)
    assert any("SHA256SUMS.txt not found" in p for p in report.problems)  # the CXR root has none

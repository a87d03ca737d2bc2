import json

import polars as pl
import pytest

from carebench_cli.grid import RunSpec
from carebench_cli.run_store import (
    DONE_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    REQUIRED_FILES,
    WEIGHTS_FILE,
    RunStatus,
    RunStore,
    atomic_path,
)


def _spec(seed=42):
    return RunSpec(
        model="lstm",
        task="mortality",
        cohort="base",
        fold=0,
        seed=seed,
        train_cxr_drop=0.0,
        profile="quick",
        test_settings=("natural",),
        dataset_hash="h",
    )


def _complete(store, spec, *, finish=True):
    writer = store.start(spec)
    frame = pl.DataFrame({"sample_id": [1, 2], "y_score": [0.2, 0.9]})
    writer.write_parquet(PREDICTIONS_FILE, frame)
    writer.write_parquet("val_predictions.parquet", frame)
    writer.write_json(METRICS_FILE, {"val_metric": 0.5})
    writer.write_train_log([{"epoch": 1, "val_loss": 0.7}])
    with writer.file(WEIGHTS_FILE) as temporary:
        temporary.write_bytes(b"\x00" * 64)
    if finish:
        writer.finish()
    return writer


def test_done_is_written_last_and_lists_every_file(tmp_path):
    store = RunStore(tmp_path)
    spec = _spec()
    writer = _complete(store, spec, finish=False)
    assert store.status(spec.run_id) is RunStatus.PARTIAL
    writer.finish()
    assert store.status(spec.run_id, verify_hashes=True) is RunStatus.DONE
    marker = json.loads((tmp_path / spec.run_id / DONE_FILE).read_text())
    assert set(marker["files"]) == set(REQUIRED_FILES)
    finished, skipped = store.finished()
    assert [run.run_id for run in finished] == [spec.run_id]
    assert finished[0].spec == spec
    assert finished[0].metrics == {"val_metric": 0.5}
    assert skipped == {}


def test_finish_refuses_missing_files(tmp_path):
    store = RunStore(tmp_path)
    writer = store.start(_spec())
    with pytest.raises(RuntimeError, match="missing"):
        writer.finish()
    assert not (writer.path / DONE_FILE).exists()


def test_partial_and_corrupt_runs_are_not_reported_and_are_redone(tmp_path):
    store = RunStore(tmp_path)
    done, partial, truncated, bad_marker = (_spec(seed) for seed in (1, 2, 3, 4))
    _complete(store, done)
    _complete(store, partial, finish=False)
    _complete(store, truncated)
    (tmp_path / truncated.run_id / PREDICTIONS_FILE).write_bytes(b"PAR1")
    _complete(store, bad_marker)
    (tmp_path / bad_marker.run_id / DONE_FILE).write_text("{not json")
    (tmp_path / "report").mkdir()  # not a run directory
    assert store.status(partial.run_id) is RunStatus.PARTIAL
    assert store.status(truncated.run_id) is RunStatus.CORRUPT
    assert store.status(bad_marker.run_id) is RunStatus.CORRUPT
    assert store.status(_spec(5).run_id) is RunStatus.ABSENT
    finished, skipped = store.finished()
    assert [run.run_id for run in finished] == [done.run_id]
    assert skipped == {
        partial.run_id: RunStatus.PARTIAL,
        truncated.run_id: RunStatus.CORRUPT,
        bad_marker.run_id: RunStatus.CORRUPT,
    }
    # Redo: start() wipes the old directory, so no stale file survives into the new run.
    stale = tmp_path / partial.run_id / "stale.txt"
    stale.write_text("x")
    writer = store.start(partial)
    assert not stale.exists()
    assert sorted(p.name for p in writer.path.iterdir()) == ["config.json"]


def test_same_size_corruption_needs_hash_check(tmp_path):
    store = RunStore(tmp_path)
    spec = _spec()
    _complete(store, spec)
    weights = tmp_path / spec.run_id / WEIGHTS_FILE
    weights.write_bytes(b"\x01" * 64)
    assert store.status(spec.run_id) is RunStatus.DONE
    assert store.status(spec.run_id, verify_hashes=True) is RunStatus.CORRUPT


def test_config_not_matching_directory_is_corrupt(tmp_path):
    store = RunStore(tmp_path)
    spec = _spec()
    _complete(store, spec)
    config = tmp_path / spec.run_id / "config.json"
    config.write_text(config.read_text().replace('"seed": 42', '"seed": 41'))
    # DONE lists the old size; keep the size equal so that only the id check can catch it.
    assert store.status(spec.run_id) is RunStatus.CORRUPT


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("old")
    with pytest.raises(ZeroDivisionError), atomic_path(target) as temporary:
        temporary.write_text("new")
        raise ZeroDivisionError
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]

import json
import os
import stat

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
    assert store.status(spec.run_id, verify_hashes=False) is RunStatus.DONE
    assert store.status(spec.run_id) is RunStatus.CORRUPT


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


def test_report_and_resume_never_read_a_same_size_edit(tmp_path):
    from carebench_cli.report.collect import collect_runs

    store = RunStore(tmp_path)
    kept, edited = _spec(1), _spec(2)
    for spec in (kept, edited):
        _complete(store, spec)
    predictions = tmp_path / edited.run_id / PREDICTIONS_FILE
    data = bytearray(predictions.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    predictions.write_bytes(bytes(data))
    assert store.status(edited.run_id) is RunStatus.CORRUPT  # so `carebench run` redoes it
    collection = collect_runs(tmp_path)
    assert [run.run_id for run in collection.runs] == [kept.run_id]
    assert collection.skipped == {edited.run_id: RunStatus.CORRUPT}


def test_each_file_is_hashed_once_per_process_while_unchanged(tmp_path, monkeypatch):
    import carebench_cli.run_store as run_store

    store = RunStore(tmp_path)
    spec = _spec()
    _complete(store, spec)
    run_store._HASHES.clear()
    hashed = []
    original = run_store.sha256_file
    monkeypatch.setattr(run_store, "sha256_file", lambda path: hashed.append(path.name) or original(path))
    for _ in range(3):
        assert store.status(spec.run_id) is RunStatus.DONE
        store.finished()
    assert sorted(hashed) == sorted(REQUIRED_FILES)
    weights = tmp_path / spec.run_id / WEIGHTS_FILE
    weights.write_bytes(b"\x02" * 64)  # same size, new modification time: hashed again, and caught
    assert store.status(spec.run_id) is RunStatus.CORRUPT
    assert hashed.count(WEIGHTS_FILE) == 2


def test_metrics_json_holds_null_not_nan(tmp_path):
    store = RunStore(tmp_path)
    writer = store.start(_spec())
    writer.write_json(METRICS_FILE, {"val": {"auprc_score": float("nan")}, "test": [float("inf"), 0.5]})
    text = (writer.path / METRICS_FILE).read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"test": [None, 0.5], "val": {"auprc_score": None}}


def test_files_follow_the_umask_not_0600(tmp_path):
    previous = os.umask(0o022)
    try:
        store = RunStore(tmp_path)
        spec = _spec()
        _complete(store, spec)
        for path in (tmp_path / spec.run_id).iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name
        os.umask(0o027)
        target = tmp_path / "other.txt"
        with atomic_path(target) as temporary:
            temporary.write_text("x")
        assert stat.S_IMODE(target.stat().st_mode) == 0o640
    finally:
        os.umask(previous)


def test_start_takes_the_run_lock_and_finish_releases_it(tmp_path):
    from carebench_data.locks import LockHeldError

    store, other = RunStore(tmp_path), RunStore(tmp_path)
    spec = _spec()
    writer = _complete(store, spec, finish=False)
    assert store.lock_path(spec.run_id).is_file()
    assert other.holder(spec.run_id) is not None
    with pytest.raises(LockHeldError):
        other.start(spec)  # same process, other store: the lock is held, the directory untouched
    assert (writer.path / PREDICTIONS_FILE).is_file()
    writer.finish()
    assert not store.lock_path(spec.run_id).exists() and other.holder(spec.run_id) is None


def test_a_run_directory_with_foreign_files_is_not_deleted(tmp_path):
    from carebench_data.outputs import OutputDirectoryError

    store = RunStore(tmp_path)
    spec = _spec()
    folder = tmp_path / spec.run_id
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirectoryError, match="files that carebench runs do not write"):
        store.start(spec)
    assert (folder / "notes.txt").read_text() == "mine"
    store.release_all()


def test_a_run_whose_lock_was_taken_over_is_not_marked_done(tmp_path):
    from carebench_cli.run_store import RunLockLostError

    store = RunStore(tmp_path)
    spec = _spec()
    writer = _complete(store, spec, finish=False)
    lock = store.lock_path(spec.run_id)
    content = json.loads(lock.read_text())
    lock.write_text(json.dumps({**content, "host": "node-2", "token": "theirs"}))
    with pytest.raises(RunLockLostError, match="took over its lock"):
        writer.finish()
    assert not (writer.path / DONE_FILE).exists()
    store.release_all()
    assert json.loads(lock.read_text())["token"] == "theirs"

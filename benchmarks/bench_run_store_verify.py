"""Hash verification of a run store: what checking every `DONE` hash costs a report of a 50-run grid.

The report and the resume path check each finished run's SHA-256 against `DONE` (not only the
sizes). Same run, same store: the size-only check (the baseline, what was done before), the first
hashing pass of the files the report reads, a second pass (served by the per-process cache keyed by
path, size and modification time), and a full pass over every file including the weights.

    pytest benchmarks/bench_run_store_verify.py --benchmark-enable -s

Target: the cached pass costs at most 3x the size-only pass.
"""

from __future__ import annotations

import time

import numpy as np
import polars as pl

import carebench_cli.run_store as run_store
from carebench_cli.grid import RunSpec
from carebench_cli.run_store import (
    METRICS_FILE,
    PREDICTIONS_FILE,
    READ_FILES,
    VAL_PREDICTIONS_FILE,
    WEIGHTS_FILE,
    RunStatus,
    RunStore,
)

RUNS, ROWS, WEIGHT_BYTES = 50, 20_000, 1 << 20


def _store(root) -> RunStore:
    store = RunStore(root)
    rng = np.random.default_rng(0)
    for seed in range(RUNS):
        spec = RunSpec(
            model="lstm",
            task="mortality",
            cohort="base",
            fold=0,
            seed=seed,
            train_cxr_drop=0.0,
            profile="quick",
            test_settings=("natural",),
            dataset_hash="bench",
        )
        writer = store.start(spec)
        frame = pl.DataFrame({"sample_id": np.arange(ROWS), "y_score": rng.random(ROWS)})
        writer.write_parquet(PREDICTIONS_FILE, frame)
        writer.write_parquet(VAL_PREDICTIONS_FILE, frame)
        writer.write_json(METRICS_FILE, {"val": {"auprc_score": 0.5}})
        writer.write_train_log([{"epoch": 1}])
        with writer.file(WEIGHTS_FILE) as temporary:
            temporary.write_bytes(rng.bytes(WEIGHT_BYTES))
        writer.finish()
    return store


def _timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def _all_done(store: RunStore, **options) -> None:
    assert all(store.status(run_id, **options) is RunStatus.DONE for run_id in store.run_ids())


def test_verified_report_pass_is_cheap_once_cached(benchmark, tmp_path) -> None:
    store = _store(tmp_path)
    sizes_only = min(_timed(lambda: _all_done(store, verify_hashes=False)) for _ in range(5))
    run_store._HASHES.clear()
    first = _timed(lambda: _all_done(store, files=READ_FILES))
    cached = min(_timed(lambda: _all_done(store, files=READ_FILES)) for _ in range(5))
    run_store._HASHES.clear()
    everything = _timed(lambda: _all_done(store))
    benchmark(lambda: _all_done(store, files=READ_FILES))
    print(
        f"\n{RUNS} runs: sizes only {sizes_only * 1e3:.1f} ms; hashes of the report's files: first pass "
        f"{first * 1e3:.1f} ms ({first / sizes_only:.1f}x), cached {cached * 1e3:.1f} ms "
        f"({cached / sizes_only:.2f}x); every file incl. {WEIGHT_BYTES >> 20} MiB weights {everything * 1e3:.1f} ms "
        f"({everything / sizes_only:.1f}x)"
    )
    assert cached <= 3 * sizes_only

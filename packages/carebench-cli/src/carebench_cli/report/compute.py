"""The report's Compute section: device-hours per model and for the grid, from each run's compute record.

A run's device-hours are its wall time divided by the runs that shared its device (`--jobs` puts
several on one GPU), so the grid's total is what the grid occupied, like a model card's compute line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from carebench_cli.report.collect import RunCollection
from carebench_cli.report.document import Section, Table

DEVICE_UNITS: dict[str, str] = {"cuda": "GPU-hours", "cpu": "CPU process-hours"}
"""What an hour of each device kind is called; CPU hours are wall time of a training process, never GPU-hours."""


def compute_rows(collection: RunCollection) -> pl.DataFrame:
    """One row per finished run: model, device kind and name, device-hours, wall time, epochs, speed, peak memory.

    A run written before compute records existed counts its wall time (`seconds`) on its device,
    alone on it, and has `recorded` False.
    """
    rows: list[dict[str, Any]] = []
    for run in collection.runs:
        metrics = run.metrics
        compute = metrics.get("compute")
        if compute:
            rows.append(
                {
                    "model": run.spec.model,
                    "device": str(compute["device"]),
                    "device_name": str(compute["device_name"]),
                    "device_hours": float(compute["device_hours"]),
                    "wall_seconds": float(compute["wall_seconds"]),
                    "runs_on_device": int(compute["runs_on_device"]),
                    "epochs": int(compute["epochs"]),
                    "train_samples_per_s": compute.get("train_samples_per_s"),
                    "peak_memory_mib": compute.get("peak_memory_mib"),
                    "peak_memory_kind": str(compute.get("peak_memory_kind", "")),
                    "recorded": True,
                }
            )
            continue
        seconds = float(metrics.get("seconds") or 0.0)
        device = str(metrics.get("device") or "cpu")
        rows.append(
            {
                "model": run.spec.model,
                "device": "cpu" if device == "cpu" else "cuda",
                "device_name": "not recorded",
                "device_hours": seconds / 3600,
                "wall_seconds": seconds,
                "runs_on_device": 1,
                "epochs": int(metrics.get("epochs") or 0),
                "train_samples_per_s": None,
                "peak_memory_mib": None,
                "peak_memory_kind": "",
                "recorded": False,
            }
        )
    schema = {
        "model": pl.String,
        "device": pl.String,
        "device_name": pl.String,
        "device_hours": pl.Float64,
        "wall_seconds": pl.Float64,
        "runs_on_device": pl.Int64,
        "epochs": pl.Int64,
        "train_samples_per_s": pl.Float64,
        "peak_memory_mib": pl.Float64,
        "peak_memory_kind": pl.String,
        "recorded": pl.Boolean,
    }
    return pl.DataFrame(rows, schema=schema)


def _hours(value: float) -> str:
    return f"{value:.2f}" if value >= 1 else f"{value:.3g}"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def _names(values: Sequence[str]) -> str:
    return ", ".join(sorted(set(values)))


def compute_section(collection: RunCollection) -> Section:
    """Device-hours per model and for the whole grid, with wall time, epochs, training speed and peak memory."""
    frame = compute_rows(collection)
    section = Section("Compute")
    totals = []
    for device, group in frame.group_by("device", maintain_order=True):
        unit = DEVICE_UNITS[str(device[0])]
        shared = sorted(set(group["runs_on_device"].to_list()))
        sharing = (
            f", up to {max(shared)} runs at once per device"
            if max(shared) > 1
            else ", one run at a time per device"
        )
        totals.append(
            f"{_hours(float(group['device_hours'].sum()))} {unit} for {group.height} run(s) on "
            f"{_names(group['device_name'].to_list())}{sharing}"
        )
    section.paragraphs.append(
        "Compute of the grid: "
        + "; ".join(totals)
        + ". A run's device-hours are its wall time (training, every prediction, writing) divided by the "
        "runs that shared its device."
    )
    if (frame["device"] == "cpu").any():
        section.paragraphs.append(
            "CPU process-hours are the wall time of CPU training processes; they are not GPU-hours."
        )
    old = int((~frame["recorded"]).sum())
    if old:
        section.paragraphs.append(
            f"{old} run(s) were written without a compute record: their wall time is counted, alone on "
            "their device, and their device name, speed and memory are not known."
        )
    summary = (
        frame.group_by("model", "device")
        .agg(
            pl.len().alias("runs"),
            pl.col("device_hours").sum(),
            pl.col("wall_seconds").mean(),
            pl.col("epochs").mean(),
            pl.col("train_samples_per_s").mean(),
            pl.col("peak_memory_mib").max(),
            pl.col("peak_memory_kind").first(),
        )
        .sort("model", "device")
    )
    rows = [
        {
            "model": row["model"],
            "runs": str(row["runs"]),
            "device": row["device"],
            "device-hours": _hours(row["device_hours"]),
            "wall time per run": _duration(row["wall_seconds"]),
            "mean epochs": f"{row['epochs']:.1f}",
            "training samples/s": "-"
            if row["train_samples_per_s"] is None
            else f"{row['train_samples_per_s']:.0f}",
            "peak memory": "-"
            if row["peak_memory_mib"] is None
            else f"{row['peak_memory_mib']:.0f} MiB ({'GPU' if row['peak_memory_kind'] == 'cuda_max_allocated' else 'RSS'})",
        }
        for row in summary.iter_rows(named=True)
    ]
    columns = list(rows[0]) if rows else []
    section.tables.append(
        Table(
            key="compute",
            caption="Compute per model",
            frame=pl.DataFrame(
                {column: [row[column] for row in rows] for column in columns},
                schema=dict.fromkeys(columns, pl.String),
            ),
            note="device-hours: wall time / runs sharing the device; training samples/s: training steps "
            "only (no validation); peak memory: the largest run's peak (GPU: allocated by torch; CPU: "
            "resident set of its process).",
        )
    )
    return section

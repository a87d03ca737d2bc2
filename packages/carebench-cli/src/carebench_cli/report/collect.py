"""Read the finished runs of a run store into the frames the report analyses.

Partial and corrupt run directories are left out (and counted), never mixed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from carebench_cli.errors import CliError
from carebench_cli.run_store import READ_FILES, FinishedRun, RunStatus, RunStore

UNIMODAL_GROUP = "unimodal"


@dataclass(frozen=True)
class RunCollection:
    """All finished runs of a store: their predictions (test and validation) and per-run facts."""

    root: Path
    runs: list[FinishedRun]
    skipped: Mapping[str, RunStatus]
    test: pl.DataFrame
    """Test predictions of every run and test setting (DESIGN §5 long format)."""
    val: pl.DataFrame
    """Validation predictions (natural setting) of every run."""
    model_groups: Mapping[str, str] = field(default_factory=dict)
    """model -> registry group (`unimodal`, `complete-modality`, `imbalance-aware`, `missing-modality`)."""

    @property
    def models(self) -> list[str]:
        """Model names present, sorted."""
        return sorted({run.spec.model for run in self.runs})

    @property
    def tasks(self) -> list[str]:
        """Task names present, in the benchmark's order when known."""
        order = {"mortality": 0, "phenotype": 1, "los": 2}
        return sorted({run.spec.task for run in self.runs}, key=lambda name: (order.get(name, 9), name))

    def unimodal(self) -> list[str]:
        """Unimodal baselines present."""
        return [model for model in self.models if self.model_groups.get(model) == UNIMODAL_GROUP]

    def fused(self) -> list[str]:
        """Fusion models present (every group but unimodal)."""
        return [model for model in self.models if self.model_groups.get(model) != UNIMODAL_GROUP]

    def runs_table(self) -> pl.DataFrame:
        """One row per finished run: keys, drop protocol, CXR weights, variant, epochs, validation metric, seconds."""
        rows: list[dict[str, Any]] = []
        for run in self.runs:
            metrics = run.metrics
            primary = metrics.get("primary_metric", "")
            rows.append(
                {
                    "run_id": run.run_id,
                    "model": run.spec.model,
                    "task": run.spec.task,
                    "cohort": run.spec.cohort,
                    "fold": run.spec.fold,
                    "seed": run.spec.seed,
                    "train_cxr_drop": run.spec.train_cxr_drop,
                    "train_cxr_drop_protocol": run.spec.train_cxr_drop_protocol,
                    "profile": run.spec.profile,
                    "cxr_weights": run.spec.cxr_weights,
                    "cxr_weights_sha256": run.spec.cxr_weights_sha256,
                    "variant": str(metrics.get("model_info", {}).get("variant", "")),
                    "reads_cxr": "cxr" in metrics.get("model_info", {}).get("modalities", ["ehr", "cxr"]),
                    "epochs": metrics.get("epochs"),
                    "best_epoch": metrics.get("best_epoch"),
                    "primary_metric": primary,
                    "val_metric": metrics.get("val", {}).get(primary),
                    "seconds": metrics.get("seconds"),
                    "device": metrics.get("device"),
                }
            )
        return pl.DataFrame(rows)


def _read(paths: list[Path]) -> pl.DataFrame:
    frames = [pl.read_parquet(path) for path in paths]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def collect_runs(root: Path) -> RunCollection:
    """Load every finished run under `root` whose files still match the hashes in its `DONE`.

    Raises:
        CliError: `root` has no finished run.
    """
    store = RunStore(root)
    runs, skipped = store.finished(files=READ_FILES)
    if not runs:
        detail = f" ({len(skipped)} unfinished run director(ies) left out)" if skipped else ""
        raise CliError(f"{root}: no finished runs to report{detail}; run `carebench run --out {root}` first")
    groups: dict[str, str] = {}
    for run in runs:
        info = run.metrics.get("model_info", {})
        groups[run.spec.model] = str(info.get("group", "unknown"))
    return RunCollection(
        root=root,
        runs=runs,
        skipped=skipped,
        test=_read([run.predictions for run in runs]),
        val=_read([run.val_predictions for run in runs]),
        model_groups=groups,
    )

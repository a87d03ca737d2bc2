"""What every report section shares: the runs, the statistics settings, and cached eval results."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import polars as pl

from carebench_cli.config import ReportConfig
from carebench_cli.report.collect import RunCollection
from carebench_cli.report.tidy import headline, summary_target, where

logger = logging.getLogger(__name__)

PRIMARY_METRICS: dict[str, str] = {
    "binary": "auprc_score",
    "multilabel": "auprc_score",
    "multiclass": "accuracy_score",
}
"""Primary metric per task kind (eval.md §5.5: follows upstream model selection)."""

TABLE_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("auroc_score", "auprc_score"),
    "multilabel": ("auroc_score", "auprc_score"),
    "multiclass": ("accuracy_score", "f1_score", "kappa_linear_score", "auroc_score"),
}
"""Leaderboard metrics per task kind (eval.md §9, Table 2)."""

METRIC_LABELS: dict[str, str] = {
    "auroc_score": "AUROC",
    "auprc_score": "AUPRC",
    "accuracy_score": "accuracy",
    "f1_score": "macro-F1",
    "kappa_linear_score": "linear κ",
    "sensitivity_score": "TPR",
    "fpr_error": "FPR",
    "expected_calibration_error": "ECE",
    "brier_loss": "Brier",
    "base_rate": "base rate",
    "positive_rate": "positive rate",
}

EHR_ONLY_MODELS: tuple[str, ...] = ("lstm", "transformer")
"""Unimodal EHR baselines (their score does not depend on the CXR: the robustness reference line)."""
CXR_ONLY_MODEL = "resnet"
"""The unimodal CXR baseline (the `M_CXR-only` of eval.md §7.4)."""

_TEST_TOKEN = re.compile(r"^test_cxr_(mcar|mnar)_([0-9.]+)$")


def metric_label(metric: str) -> str:
    """Display name of a registry metric (`auprc_score` -> `AUPRC`)."""
    return METRIC_LABELS.get(metric, metric)


DROP_PROTOCOL_TOKENS: dict[str, str] = {"trainval_cxr_drop_": "upstream", "train_cxr_drop_": "train_only"}
"""Setting token prefix of a train-time CXR drop -> its protocol (`upstream` also drops validation CXRs)."""


def parse_setting(setting: str) -> dict[str, str | float]:
    """Split a predictions setting into cohort, train drop (rate and protocol), test mechanism and rate.

    Example: `cohort_base+test_cxr_mnar_0.5` -> {cohort: base, train_drop: 0.0, drop_protocol: "",
    mechanism: mnar, rate: 0.5}; `cohort_base+trainval_cxr_drop_0.5` has train_drop 0.5 and
    drop_protocol `upstream`.
    """
    parsed: dict[str, str | float] = {
        "cohort": "",
        "train_drop": 0.0,
        "drop_protocol": "",
        "mechanism": "natural",
        "rate": 0.0,
    }
    for token in setting.split("+"):
        drop = next((prefix for prefix in DROP_PROTOCOL_TOKENS if token.startswith(prefix)), None)
        if token.startswith("cohort_"):
            parsed["cohort"] = token.removeprefix("cohort_")
        elif drop is not None:
            parsed["train_drop"] = float(token.removeprefix(drop))
            parsed["drop_protocol"] = DROP_PROTOCOL_TOKENS[drop]
        elif match := _TEST_TOKEN.match(token):
            parsed["mechanism"] = match.group(1)
            parsed["rate"] = float(match.group(2))
        else:
            parsed["mechanism"] = token
    return parsed


@dataclass(frozen=True)
class Selection:
    """A reference model of a comparison and the split its score was read on.

    Attributes:
        model: the chosen model.
        on: `validation` (the rule), or `test` when no candidate has a finite validation score: then
            the choice is marked `selected_on_test` (picking the maximum on test favours it there).
    """

    model: str
    on: str = "validation"

    @property
    def note(self) -> str:
        """`selected_on_test` when chosen on test, else empty."""
        return "selected_on_test" if self.on == "test" else ""


@dataclass
class ReportContext:
    """The runs to report and the settings of every statistic, with eval results cached by key."""

    collection: RunCollection
    config: ReportConfig
    status: Callable[[str], None] = lambda message: None
    results: dict[str, pl.DataFrame] = field(default_factory=dict)
    """Tidy result tables written next to the report (aggregates only, never row-level data)."""
    _frames: dict[tuple[object, ...], pl.DataFrame] = field(default_factory=dict, repr=False)
    """Prediction subsets already validated by carebench-eval, so every statistic reuses them unchecked."""

    def _validated(self, key: tuple[object, ...], build: Callable[[], pl.DataFrame]) -> pl.DataFrame:
        """The subset `key`, built and validated once (`ce.read_predictions` remembers the frame)."""
        if key not in self._frames:
            import carebench_eval as ce

            self._frames[key] = ce.read_predictions(build())
        return self._frames[key]

    @cached_property
    def kinds(self) -> dict[str, str]:
        """Task -> kind (from the runs' metrics.json)."""
        return {run.spec.task: str(run.metrics["task_kind"]) for run in self.collection.runs}

    def primary(self, task: str) -> str:
        """Primary metric of a task."""
        return PRIMARY_METRICS[self.kinds[task]]

    @cached_property
    def cohorts(self) -> list[str]:
        """Cohorts with runs trained without train-time CXR drop (`base` first)."""
        present = {run.spec.cohort for run in self.collection.runs if run.spec.train_cxr_drop == 0.0}
        return sorted(present, key=lambda name: (name != "base", name))

    @staticmethod
    def natural_setting(cohort: str) -> str:
        """The setting name of the unperturbed test set of a cohort."""
        return f"cohort_{cohort}"

    def test(self, cohort: str, *, task: str | None = None, natural: bool = True) -> pl.DataFrame:
        """Test predictions of a cohort (no train-time drop): the natural setting, or every test setting."""
        return self._validated(("test", cohort, task, natural), lambda: self._test(cohort, task, natural))

    def _test(self, cohort: str, task: str | None, natural: bool) -> pl.DataFrame:
        frame = self.collection.test
        settings = frame["setting"].unique().to_list()
        keep = [
            setting
            for setting in settings
            if (parsed := parse_setting(setting))["cohort"] == cohort
            and parsed["train_drop"] == 0.0
            and (not natural or parsed["mechanism"] == "natural")
        ]
        frame = frame.filter(pl.col("setting").is_in(keep))
        return frame if task is None else frame.filter(pl.col("task") == task)

    def val(self, cohort: str, *, task: str | None = None) -> pl.DataFrame:
        """Validation predictions of a cohort (no train-time drop)."""

        def build() -> pl.DataFrame:
            frame = self.collection.val.filter(pl.col("setting") == self.natural_setting(cohort))
            return frame if task is None else frame.filter(pl.col("task") == task)

        return self._validated(("val", cohort, task), build)

    def tasks(self, cohort: str) -> list[str]:
        """Tasks with test predictions in a cohort."""
        present = set(self.test(cohort)["task"].unique().to_list())
        return [task for task in self.collection.tasks if task in present]

    def models(self, cohort: str, task: str) -> list[str]:
        """Models with natural test predictions for (cohort, task), sorted."""
        return sorted(self.test(cohort, task=task)["model"].unique().to_list())

    def unimodal(self, cohort: str, task: str) -> list[str]:
        """Unimodal baselines with runs for (cohort, task)."""
        return [model for model in self.models(cohort, task) if model in self.collection.unimodal()]

    def fused(self, cohort: str, task: str) -> list[str]:
        """Fusion models with runs for (cohort, task)."""
        return [model for model in self.models(cohort, task) if model in self.collection.fused()]

    def score(self, cohort: str) -> pl.DataFrame:
        """`ce.score` of the natural test predictions of a cohort, with bootstrap CIs (cached)."""
        key = f"score_{cohort}"
        if key not in self.results:
            import carebench_eval as ce

            self.status(f"scoring {cohort} cohort")
            self.results[key] = ce.score(
                self.test(cohort), n_boot=self.config.n_boot, random_state=self.config.random_state
            )
        return self.results[key]

    def val_score(self, cohort: str) -> pl.DataFrame:
        """Validation point estimates of a cohort (no CIs; used only to select models)."""
        key = f"_val_score_{cohort}"
        if key not in self.results:
            import carebench_eval as ce

            self.results[key] = ce.score(self.val(cohort), n_boot=0)
        return self.results[key]

    def headline_values(self, frame: pl.DataFrame, *, task: str, metric: str) -> dict[str, pl.DataFrame]:
        """Model -> its one summary row for (task, metric) in a score table."""
        target = summary_target(frame, task=task, metric=metric)
        rows = headline(where(frame, task=task, metric=metric, target=target, group_attribute=None))
        return {
            str(model): rows.filter(pl.col("model") == model) for model in rows["model"].unique().to_list()
        }

    def _finite_scores(self, scores: pl.DataFrame, task: str, candidates: list[str]) -> dict[str, float]:
        values = self.headline_values(scores, task=task, metric=self.primary(task))
        scored = {
            model: rows["value"][0] for model, rows in values.items() if model in candidates and rows.height
        }
        return {
            model: float(value) for model, value in scored.items() if value is not None and value == value
        }

    def select(self, cohort: str, task: str, candidates: list[str]) -> Selection | None:
        """The candidate with the best primary metric on validation predictions (ties: name order).

        Without a finite validation score for any candidate, the test point estimates decide and the
        selection says so (`Selection.on == "test"`); None when neither split scores any candidate.
        """
        if not candidates:
            return None
        for split, scores in (("validation", self.val_score), ("test", self.score)):
            finite = self._finite_scores(scores(cohort), task, candidates)
            if finite:
                return Selection(sorted(finite, key=lambda model: (-finite[model], model))[0], on=split)
        return None

    def best(self, cohort: str, task: str, candidates: list[str]) -> str | None:
        """The model of `select` (a candidate by name order when no split scores any)."""
        selection = self.select(cohort, task, candidates)
        if selection is not None:
            return selection.model
        return sorted(candidates)[0] if candidates else None

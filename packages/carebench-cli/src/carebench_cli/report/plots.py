"""Figures of the report, drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display).

Each function takes plain aggregated numbers (never row-level predictions) and returns PNG bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_DPI = 110
_PALETTE = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#F0E442",
    "#000000",
    "#882255",
    "#44AA99",
    "#999933",
    "#AA4499",
    "#117733",
    "#332288",
    "#DDCC77",
    "#88CCEE",
    "#661100",
)


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def color(index: int) -> str:
    """A colour-blind-safe colour for series `index` (cycles)."""
    return _PALETTE[index % len(_PALETTE)]


def _error_bars(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """[2, n] non-negative error bar lengths; NaN bounds draw no bar."""
    below = np.where(np.isnan(low), 0.0, np.maximum(values - low, 0.0))
    above = np.where(np.isnan(high), 0.0, np.maximum(high - values, 0.0))
    return np.vstack([below, above])


@dataclass(frozen=True)
class Interval:
    """A labelled point estimate with a confidence interval."""

    label: str
    value: float
    low: float
    high: float
    marked: bool = False
    """Drawn filled and bold (e.g. significant after correction)."""
    highlighted: bool = False
    """Label drawn in colour (e.g. the diseases the paper names)."""


def forest_plot(rows: Sequence[Interval], *, title: str, xlabel: str, reference: float = 0.0) -> bytes:
    """Horizontal forest plot: one row per label, estimate with CI, a vertical line at `reference`.

    Args:
        rows: intervals, drawn top to bottom in the given order.
        title: figure title.
        xlabel: x axis label (e.g. "Δ AUPRC, best fusion − best unimodal").
        reference: x position of the no-effect line.
    """
    height = max(2.5, 0.28 * len(rows) + 1.2)
    figure = Figure(figsize=(7.5, height))
    axes = figure.add_subplot()
    y = np.arange(len(rows))[::-1]
    values = np.array([row.value for row in rows], dtype=float)
    low = np.array([row.low for row in rows], dtype=float)
    high = np.array([row.high for row in rows], dtype=float)
    axes.axvline(reference, color="#888888", linewidth=1, linestyle="--")
    for position, row, value, bars in zip(y, rows, values, _error_bars(values, low, high).T, strict=True):
        axes.errorbar(
            value,
            position,
            xerr=bars.reshape(2, 1),
            fmt="o",
            color=color(0) if row.marked else "#555555",
            markerfacecolor=color(0) if row.marked else "white",
            capsize=2,
        )
    axes.set_yticks(y, [row.label for row in rows])
    for tick, row in zip(axes.get_yticklabels(), rows, strict=True):
        if row.highlighted:
            tick.set_color(color(1))
            tick.set_fontweight("bold")
    axes.set_xlabel(xlabel)
    axes.set_title(title, fontsize=11)
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)


def heatmap(
    matrix: np.ndarray,
    *,
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    title: str,
    colorbar_label: str,
    annotations: Sequence[Sequence[str]] | None = None,
    diverging: bool = True,
) -> bytes:
    """Annotated heat map; NaN cells are blank. Diverging maps are centred on 0.

    Args:
        matrix: [rows, columns] values.
        row_labels: `rows` labels.
        column_labels: `columns` labels.
        title: figure title.
        colorbar_label: colour bar label.
        annotations: optional [rows][columns] cell texts (e.g. "+0.012*" or "n=41").
        diverging: red-blue map centred on 0 (differences) instead of a sequential map (levels).
    """
    rows, columns = matrix.shape
    figure = Figure(figsize=(max(4.0, 0.75 * columns + 2.5), max(3.0, 0.45 * rows + 1.5)))
    axes = figure.add_subplot()
    finite = matrix[np.isfinite(matrix)]
    if diverging:
        bound = float(np.max(np.abs(finite))) if finite.size else 1.0
        bound = bound if bound > 0 else 1.0
        image = axes.imshow(matrix, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    else:
        image = axes.imshow(matrix, cmap="viridis", aspect="auto")
    axes.set_xticks(np.arange(columns), column_labels, rotation=45, ha="right")
    axes.set_yticks(np.arange(rows), row_labels)
    if annotations is not None:
        for i in range(rows):
            for j in range(columns):
                if annotations[i][j]:
                    axes.text(j, i, annotations[i][j], ha="center", va="center", fontsize=7, color="black")
    figure.colorbar(image, ax=axes, label=colorbar_label, shrink=0.8)
    axes.set_title(title, fontsize=11)
    return _png(figure)


def bar_chart(rows: Sequence[Interval], *, title: str, ylabel: str, reference: float | None = 0.0) -> bytes:
    """Vertical bars with CI whiskers, one per label (e.g. the CXR modality drop per fusion model)."""
    figure = Figure(figsize=(max(4.0, 0.55 * len(rows) + 2.0), 3.8))
    axes = figure.add_subplot()
    x = np.arange(len(rows))
    values = np.array([row.value for row in rows], dtype=float)
    low = np.array([row.low for row in rows], dtype=float)
    high = np.array([row.high for row in rows], dtype=float)
    colors = [color(0) if row.marked else "#9aa5b1" for row in rows]
    axes.bar(x, np.nan_to_num(values), color=colors)
    axes.errorbar(x, values, yerr=_error_bars(values, low, high), fmt="none", ecolor="black", capsize=3)
    if reference is not None:
        axes.axhline(reference, color="#888888", linewidth=1)
    axes.set_xticks(x, [row.label for row in rows], rotation=45, ha="right")
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=11)
    axes.grid(axis="y", alpha=0.3)
    return _png(figure)


@dataclass(frozen=True)
class Curve:
    """One model's metric along the missing-CXR rate."""

    label: str
    rates: Sequence[float]
    values: Sequence[float]
    low: Sequence[float]
    high: Sequence[float]


def degradation_curves(
    panels: Mapping[str, Sequence[Curve]],
    *,
    title: str,
    ylabel: str,
    reference: tuple[str, float] | None = None,
) -> bytes:
    """One panel per mechanism (e.g. MCAR, MNAR): metric vs test-time missing-CXR rate, CI bands.

    Args:
        panels: panel title -> curves.
        title: figure title.
        ylabel: metric name.
        reference: (label, value) of a horizontal line, e.g. the best EHR-only model.
    """
    names = list(panels)
    figure = Figure(figsize=(5.2 * max(len(names), 1) + 1.5, 4.0), layout="constrained")
    labels = sorted({curve.label for curves in panels.values() for curve in curves})
    for index, name in enumerate(names):
        axes = figure.add_subplot(1, max(len(names), 1), index + 1)
        for curve in panels[name]:
            series = color(labels.index(curve.label))
            rates = np.asarray(curve.rates, dtype=float)
            axes.plot(rates, curve.values, marker="o", color=series, label=curve.label, linewidth=1.5)
            low, high = np.asarray(curve.low, dtype=float), np.asarray(curve.high, dtype=float)
            if np.isfinite(low).all() and np.isfinite(high).all():
                axes.fill_between(rates, low, high, color=series, alpha=0.15, linewidth=0)
        if reference is not None and math.isfinite(reference[1]):
            axes.axhline(reference[1], color="black", linestyle="--", linewidth=1, label=reference[0])
        axes.set_xlabel("test-time missing CXR rate")
        axes.set_ylabel(ylabel)
        axes.set_title(name, fontsize=10)
        axes.grid(alpha=0.3)
    handles, legend_labels = figure.axes[0].get_legend_handles_labels() if figure.axes else ([], [])
    if handles:
        figure.legend(handles, legend_labels, loc="outside right center", fontsize=8)
    figure.suptitle(title, fontsize=11)
    return _png(figure)


@dataclass(frozen=True)
class GroupPoint:
    """One model's metric in one group."""

    model: str
    group: str
    value: float
    low: float
    high: float


def group_dot_plot(panels: Mapping[str, Sequence[GroupPoint]], *, title: str) -> bytes:
    """Per-group dot plot, one panel per metric (e.g. TPR, FPR), one colour per model, CI whiskers."""
    names = list(panels)
    groups = sorted({point.group for points in panels.values() for point in points})
    models = sorted({point.model for points in panels.values() for point in points})
    figure = Figure(
        figsize=(4.6 * max(len(names), 1) + 1.5, max(3.0, 0.35 * len(groups) + 1.5)), layout="constrained"
    )
    offsets = np.linspace(-0.25, 0.25, max(len(models), 1)) if len(models) > 1 else np.zeros(1)
    for index, name in enumerate(names):
        axes = figure.add_subplot(1, max(len(names), 1), index + 1)
        for model_index, model in enumerate(models):
            points = [point for point in panels[name] if point.model == model]
            if not points:
                continue
            y = np.array([groups.index(point.group) for point in points], dtype=float) + offsets[model_index]
            values = np.array([point.value for point in points])
            low = np.array([point.low for point in points])
            high = np.array([point.high for point in points])
            axes.errorbar(
                values,
                y,
                xerr=_error_bars(values, low, high),
                fmt="o",
                color=color(model_index),
                label=model,
                capsize=2,
                markersize=4,
            )
        axes.set_yticks(np.arange(len(groups)), groups)
        axes.set_title(name, fontsize=10)
        axes.set_xlim(-0.02, 1.02)
        axes.grid(axis="x", alpha=0.3)
    handles, labels = figure.axes[0].get_legend_handles_labels() if figure.axes else ([], [])
    if handles:
        figure.legend(handles, labels, loc="outside right center", fontsize=8)
    figure.suptitle(title, fontsize=11)
    return _png(figure)

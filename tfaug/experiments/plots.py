"""Figures of the method comparison (paper Fig. 2, 3c and 9), drawn into PNG files.

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot state, no GUI backend);
``savefig`` renders them with Agg. Dice values are in [0, 1]; nothing here computes a
statistic beyond means and standard deviations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def save_box_plots(
    values: Mapping[str, Mapping[str, Sequence[float]]],
    structures: Sequence[str],
    path: Path,
    title: str,
) -> Path:
    """One box plot panel per structure, one box per method (paper Fig. 2).

    Args:
        values: method → structure → Dice values (one per run × test volume).
        structures: panel order (e.g. ``RV, Myo, LV, mean``).
        path: the PNG to write.
        title: figure title (the setting).

    Returns:
        ``path``.
    """
    methods = list(values)
    figure = Figure(figsize=(max(4.0, 0.7 * len(methods)) * len(structures) / 1.5, 3.6))
    axes = np.atleast_1d(figure.subplots(1, len(structures), sharey=True))
    for ax, structure in zip(axes, structures, strict=True):
        ax.boxplot([list(values[m][structure]) for m in methods], showmeans=True)
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=45, ha="right")
        ax.set_title(structure)
        ax.set_ylim(0.0, 1.0)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("3D Dice")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def save_per_subject_plot(
    per_subject: Mapping[str, Mapping[str, float]], path: Path, title: str
) -> Path:
    """Mean foreground Dice per test subject, one marker series per method (paper Fig. 9).

    Args:
        per_subject: method → test case id → mean Dice over runs (in [0, 1]).
        path: the PNG to write.
        title: figure title.

    Returns:
        ``path``.
    """
    subjects = sorted({case for scores in per_subject.values() for case in scores})
    figure = Figure(figsize=(max(5.0, 0.35 * len(subjects) + 2.0), 3.6))
    ax = figure.subplots()
    for method, scores in per_subject.items():
        xs = [i for i, case in enumerate(subjects) if case in scores]
        ax.plot(xs, [scores[subjects[i]] for i in xs], marker="o", linestyle="-", label=method)
    ax.set_xticks(range(len(subjects)), subjects, rotation=90)
    ax.set_ylabel("mean foreground Dice")
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    ax.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def save_dice_vs_nl_plot(
    curves: Mapping[str, Mapping[int, Mapping[str, tuple[float, float]]]],
    structures: Sequence[str],
    path: Path,
    title: str,
) -> Path:
    """Mean ± std Dice against N_L, one panel per structure, one line per method (Fig. 3c).

    Args:
        curves: method → N_L → structure → (mean, std).
        structures: panel order.
        path: the PNG to write.
        title: figure title.

    Returns:
        ``path``.
    """
    figure = Figure(figsize=(3.2 * len(structures), 3.4))
    axes = np.atleast_1d(figure.subplots(1, len(structures), sharey=True))
    for ax, structure in zip(axes, structures, strict=True):
        for method, by_nl in curves.items():
            nls = sorted(by_nl)
            means = [by_nl[n][structure][0] for n in nls]
            stds = [by_nl[n][structure][1] for n in nls]
            ax.errorbar(nls, means, yerr=stds, marker="o", capsize=3, label=method)
        ax.set_xlabel("N_L (labeled volumes)")
        ax.set_title(structure)
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("3D Dice")
    axes[-1].legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def save_validation_curves(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float], Sequence[float] | None]],
    path: Path,
    title: str,
) -> Path:
    """Validation Dice against the final stage's step, one line per method.

    Args:
        curves: method → (steps, mean validation Dice, mean wide validation Dice or None);
            the wide curve is drawn dashed in the same colour.
        path: the PNG to write.
        title: figure title.

    Returns:
        ``path``.
    """
    figure = Figure(figsize=(7.0, 4.0))
    ax = figure.subplots()
    for method, (steps, values, wide) in curves.items():
        (line,) = ax.plot(steps, values, label=method)
        if wide is not None:
            ax.plot(steps, wide, linestyle="--", color=line.get_color())
    return _save_dice_axes(
        figure,
        ax,
        "step of the final stage",
        "validation Dice (solid; dashed: wide set)",
        title,
        path,
    )


def save_time_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: Path,
    title: str,
    clock_words: str,
) -> Path:
    """Test Dice against training time, one line per method, a marker per budget mark.

    Args:
        curves: method → (training minutes, mean test Dice) in time order.
        path: the PNG to write.
        title: figure title.
        clock_words: what the minutes count (``"CPU time"``, ``"wall-clock time"``).

    Returns:
        ``path``.
    """
    figure = Figure(figsize=(7.0, 4.0))
    ax = figure.subplots()
    for method, (minutes, dice) in curves.items():
        ax.plot(minutes, dice, marker="o", markersize=3, label=method)
    xlabel = f"training, min ({clock_words}, median over runs)"
    return _save_dice_axes(figure, ax, xlabel, "test Dice of the choice by then", title, path)


def _save_dice_axes(
    figure: Figure, ax: Axes, xlabel: str, ylabel: str, title: str, path: Path
) -> Path:
    """Label one panel of Dice lines (y in [0, 1], grid, legend), then write the PNG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path

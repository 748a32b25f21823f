"""What the generator stages did, in physical units: traces, summaries, figures, report rows.

A generator stage (``generator_deformation`` for GV, ``generator_intensity`` for GI) writes
one row per validation into ``<stage_dir>/metrics.jsonl`` (:mod:`tfaug.training.loop`) and
its chosen step into ``done.json``. The consistency stage of ``unimatch_gdgi_joint``, which
trains GV and GI itself, logs the same statistics with the kind in front
(``deformation_field_norm``, …); its two generators are read as two traces,
``consistency/deformation`` and ``consistency/intensity`` (:data:`JOINT_TRACES`). This module
reads them and converts the field statistics of :func:`tfaug.training.joint.field_statistics`:

- GV: displacement length in pixels → mm (× ``preprocess.spacing_mm``) and → a fraction of
  the field of view (÷ ``preprocess.crop_size``);
- GI: |ΔI| stays in normalised intensity units; since preprocessing maps the p2–p98 range to
  [0, 1], the same number is also the fraction of that range.

It summarises each stage at its chosen checkpoint and at its last validation and draws one
figure per run (a column per stage); :mod:`tfaug.experiments.diagnostics_report` puts them into
``tfaug report``. Nothing is trained or evaluated; no value is smoothed or interpolated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from tfaug.io import read_jsonl, write_json_atomic
from tfaug.methods import (
    CONSISTENCY_STAGE,
    GENERATOR_KINDS,
    GENERATOR_SHORT_NAMES,
    GENERATOR_STAGES,
)

BALANCED_ADV_LOSS = math.log(2.0)  # L_adv,G when D outputs 1/2 for every generated image
FIGURE_NAME = "generator_diagnostics.png"
SUMMARY_NAME = "generator_diagnostics.json"
_FIELD_LOGGED = ("field_norm", "field_peak", "foreground_lost")  # prefixed in JOINT_TRACES
_LOGGED = ("d_acc_real", "d_acc_fake", "adv_loss", "validation_dice", "selection_score")
_ROWS = ("field", "foreground_lost", "d_accuracy", "adv_loss", "validation")
JOINT_TRACES = {f"{CONSISTENCY_STAGE}/{kind}": kind for kind in GENERATOR_KINDS}
"""Trace key → kind of the generators trained inside the consistency stage."""
TRACE_KEYS = (*GENERATOR_STAGES, *JOINT_TRACES)
"""Every trace a run can have, in the order they are shown."""
SHORT_NAMES = {
    **{stage: GENERATOR_SHORT_NAMES[kind] for stage, kind in GENERATOR_STAGES.items()},
    **{key: f"{GENERATOR_SHORT_NAMES[kind]} (joint)" for key, kind in JOINT_TRACES.items()},
}


class DiagnosticsError(ValueError):
    """A stage folder, metrics file or run config cannot be read as a generator stage's."""


@dataclass(frozen=True)
class StageTrace:
    """One generator stage's validations in physical units.

    Every array is (V,) float64, one entry per validation row of ``metrics.jsonl`` in step
    order, NaN where the row has no value (e.g. ``validation_dice`` without validation).

    Attributes:
        stage: the trace key (:data:`TRACE_KEYS`): ``generator_deformation`` or
            ``generator_intensity``, or ``consistency/<kind>`` for a generator trained in
            the consistency stage.
        kind: ``deformation`` or ``intensity``.
        steps: (V,) int64 training steps of the rows.
        field_mean: mean per-pixel field length: mm for GV, normalised intensity for GI.
        field_peak: per-slice maximum length averaged over the batch, same unit.
        unit_fraction: factor from ``field_mean``'s unit to a fraction (in [0, 1] for
            fields inside the image): 1 / field of view in mm for GV, 1 for GI.
        foreground_lost: share in [0, 1] of the foreground label mass the warp removed.
        d_acc_real, d_acc_fake: D's accuracy in [0, 1] on unlabeled and generated images.
        adv_loss: L_adv,G (non-saturating, nats).
        validation_dice: the raw validation mean foreground Dice.
        selection_score: the score the best checkpoint is chosen by (raw or smoothed).
        chosen_step: ``best_step`` of ``done.json``; for an unfinished stage the first step
            reaching the highest selection score so far (the last step without validation).
        iterations: the stage's total iterations (``None`` while unfinished).
        budget: the stage's step budget when its patience ended it earlier, else ``None``.
    """

    stage: str
    kind: str
    steps: np.ndarray
    field_mean: np.ndarray
    field_peak: np.ndarray
    unit_fraction: float
    foreground_lost: np.ndarray
    d_acc_real: np.ndarray
    d_acc_fake: np.ndarray
    adv_loss: np.ndarray
    validation_dice: np.ndarray
    selection_score: np.ndarray
    chosen_step: int
    iterations: int | None
    budget: int | None = None

    @property
    def unit(self) -> str:
        return "mm" if self.kind == "deformation" else "ΔI"

    @property
    def fraction_of(self) -> str:
        return "field of view" if self.kind == "deformation" else "p2-p98 intensity range"

    @property
    def chosen_index(self) -> int | None:
        """Row index of ``chosen_step`` (``None`` if that step has no row, e.g. an older log)."""
        found = np.flatnonzero(self.steps == self.chosen_step)
        return int(found[0]) if len(found) else None


def _check_geometry(spacing_mm: float, crop_size: int, where: Path) -> None:
    if not (spacing_mm > 0 and crop_size > 0):
        raise DiagnosticsError(
            f"{where}: expected a positive preprocess.spacing_mm and crop_size, found "
            f"{spacing_mm} mm and {crop_size} px. Pass the run's config.yaml values."
        )


def read_stage_trace(
    stage_dir: Path, *, spacing_mm: float, crop_size: int, kind: str | None = None
) -> StageTrace | None:
    """Read a generator stage folder, or one generator of a consistency stage that trains
    them, into a :class:`StageTrace`.

    Args:
        stage_dir: ``<run>/checkpoints/generator_<kind>`` (a link into a generator directory
            is followed; its name gives the kind), or ``<run>/checkpoints/consistency``.
        spacing_mm: in-plane pixel size of the preprocessed slices, in mm.
        crop_size: side of the preprocessed slices, in pixels.
        kind: for a consistency stage, the generator to read (``deformation`` or
            ``intensity``); ignored for a generator stage.

    Returns:
        The trace, or ``None`` when the folder has no ``metrics.jsonl`` row (a stage trained
        before the file existed, or not started), or, for a consistency stage, none with
        the generator's statistics (a method without generators). A torn last line is
        skipped.

    Raises:
        DiagnosticsError: the folder is not a generator or consistency stage (or no kind is
            given for the latter), a row has no ``step``, the geometry is not positive, or
            ``done.json`` is not JSON.
    """
    stage_dir = Path(stage_dir)
    key, kind, prefix = _trace_source(stage_dir, kind)
    _check_geometry(spacing_mm, crop_size, stage_dir)
    path = stage_dir / "metrics.jsonl"
    rows = read_jsonl(path)
    if not rows or (prefix and not any(f"{prefix}field_norm" in row for row in rows)):
        return None
    if any("step" not in row for row in rows):
        raise DiagnosticsError(
            f"{path}: expected a 'step' in every row (the file run_stage writes), found a row "
            "without one. Delete the file to drop the stage's diagnostics."
        )
    rows.sort(key=lambda row: row["step"])
    column = {name: _column(rows, name) for name in _LOGGED}
    column.update({name: _column(rows, f"{prefix}{name}") for name in _FIELD_LOGGED})
    steps = np.array([row["step"] for row in rows], np.int64)
    to_unit = spacing_mm if kind == "deformation" else 1.0
    done = _read_done(stage_dir / "done.json")
    chosen = done["best_step"] if done else _chosen_step(steps, column["selection_score"])
    return StageTrace(
        stage=key,
        kind=kind,
        steps=steps,
        field_mean=column["field_norm"] * to_unit,
        field_peak=column["field_peak"] * to_unit,
        unit_fraction=1.0 / (crop_size * spacing_mm) if kind == "deformation" else 1.0,
        foreground_lost=column["foreground_lost"],
        d_acc_real=column["d_acc_real"],
        d_acc_fake=column["d_acc_fake"],
        adv_loss=column["adv_loss"],
        validation_dice=column["validation_dice"],
        selection_score=column["selection_score"],
        chosen_step=int(chosen),
        iterations=int(done["iterations"]) if done else None,
        budget=_early_stop_budget(done),
    )


def _trace_source(stage_dir: Path, kind: str | None) -> tuple[str, str, str]:
    """(trace key, kind, prefix of the field statistics' names) of a stage folder."""
    if stage_dir.name in GENERATOR_STAGES:
        return stage_dir.name, GENERATOR_STAGES[stage_dir.name], ""
    if stage_dir.name == CONSISTENCY_STAGE and kind in GENERATOR_KINDS:
        return f"{CONSISTENCY_STAGE}/{kind}", kind, f"{kind}_"
    raise DiagnosticsError(
        f"{stage_dir}: expected a generator stage folder ({', '.join(GENERATOR_STAGES)}) or "
        f"a {CONSISTENCY_STAGE!r} folder with a generator kind ({', '.join(GENERATOR_KINDS)}), "
        f"found {stage_dir.name!r} and kind {kind!r}. Pass <run>/checkpoints/generator_<kind>."
    )


def _early_stop_budget(done: dict | None) -> int | None:
    """The budget of a finished stage that its patience stopped early, else ``None``."""
    if not done or done.get("budget") is None or done["budget"] <= done["iterations"]:
        return None
    return int(done["budget"])


def _column(rows: Sequence[dict], key: str) -> np.ndarray:
    return np.array([np.nan if row.get(key) is None else row[key] for row in rows], np.float64)


def _read_done(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DiagnosticsError(
            f"{path}: expected the JSON a finished stage writes, found unreadable text "
            f"({error}). Re-run the stage's command to rewrite it."
        ) from error


def _chosen_step(steps: np.ndarray, selection: np.ndarray) -> int:
    """run_stage's rule: the first step reaching the highest score; the last without one."""
    if np.all(np.isnan(selection)):
        return int(steps[-1])
    return int(steps[np.nanargmax(selection)])


def read_run_traces(run_dir: Path, *, spacing_mm: float, crop_size: int) -> dict[str, StageTrace]:
    """The traces of the generators trained in ``<run_dir>/checkpoints``, by trace key
    (:data:`TRACE_KEYS`): its generator stages, and the generators its consistency stage
    trained.

    Stages without a folder or without ``metrics.jsonl`` rows are left out. See
    :func:`read_stage_trace` for the arguments and errors.
    """
    checkpoints = Path(run_dir) / "checkpoints"
    sources = [(checkpoints / stage, None) for stage in GENERATOR_STAGES]
    sources += [(checkpoints / CONSISTENCY_STAGE, kind) for kind in JOINT_TRACES.values()]
    traces = {}
    for folder, kind in sources:
        trace = read_stage_trace(folder, spacing_mm=spacing_mm, crop_size=crop_size, kind=kind)
        if trace is not None:
            traces[trace.stage] = trace
    return traces


# ------------------------------------------------------------------------------ summaries
def _value(array: np.ndarray, index: int) -> float | None:
    value = float(array[index])
    return None if math.isnan(value) else value


def values_at(trace: StageTrace, index: int) -> dict[str, float | int | None]:
    """The logged values of one row: field (unit and fraction), losses, accuracies, Dice."""
    return {
        "step": int(trace.steps[index]),
        "field_mean": _value(trace.field_mean, index),
        "field_peak": _value(trace.field_peak, index),
        "field_mean_fraction": _value(trace.field_mean * trace.unit_fraction, index),
        "field_peak_fraction": _value(trace.field_peak * trace.unit_fraction, index),
        "foreground_lost": _value(trace.foreground_lost, index),
        "d_acc_real": _value(trace.d_acc_real, index),
        "d_acc_fake": _value(trace.d_acc_fake, index),
        "adv_loss": _value(trace.adv_loss, index),
        "validation_dice": _value(trace.validation_dice, index),
        "selection_score": _value(trace.selection_score, index),
    }


def summarise_stage(trace: StageTrace) -> dict:
    """A JSON-ready summary of one stage at its chosen checkpoint and at its last row.

    ``chosen`` is ``None`` when the chosen step has no row. Fractions are in [0, 1] (not
    percent); ``field_unit`` and ``fraction_of`` say what the field numbers mean.
    """
    index = trace.chosen_index
    return {
        "kind": trace.kind,
        "field_unit": trace.unit,
        "fraction_of": trace.fraction_of,
        "iterations": trace.iterations,
        "budget": trace.budget,
        "validations": len(trace.steps),
        "chosen_step": trace.chosen_step,
        "chosen": None if index is None else values_at(trace, index),
        "last": values_at(trace, -1),
    }


# -------------------------------------------------------------------------------- figures
def draw_generator_diagnostics(traces: Mapping[str, StageTrace], title: str) -> Figure:
    """One column per stage; rows: field, foreground lost, D accuracy, L_adv,G, validation.

    Every panel has a dashed vertical line at the stage's chosen step. Each panel's ``gid``
    is ``"<stage>/<row>"`` with row in field, foreground_lost, d_accuracy, adv_loss,
    validation. Percentages are drawn as 0–100. Nothing is saved.
    """
    if not traces:
        raise DiagnosticsError(f"{title}: no generator stage with metrics to draw")
    figure = Figure(figsize=(4.6 * len(traces), 2.2 * len(_ROWS) + 0.6))
    axes = np.asarray(figure.subplots(len(_ROWS), len(traces), sharex="col", squeeze=False))
    for col, (stage, trace) in enumerate(traces.items()):
        for row, name in enumerate(_ROWS):
            axes[row, col].set_gid(f"{stage}/{name}")
        _draw_column(axes[:, col], trace)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def _draw_column(axes: np.ndarray, trace: StageTrace) -> None:
    steps = trace.steps
    field_ax, lost_ax, d_ax, adv_ax, dice_ax = axes
    iterations = "unfinished" if trace.iterations is None else f"of {trace.iterations}"
    if trace.budget is not None:
        iterations += f" (stopped early; budget {trace.budget})"
    field_ax.set_title(
        f"{SHORT_NAMES[trace.stage]} ({trace.kind}): chosen step {trace.chosen_step} {iterations}"
    )
    field_ax.plot(steps, trace.field_mean, marker=".", label=f"mean |{_symbol(trace)}|")
    field_ax.plot(steps, trace.field_peak, marker=".", label="peak (per-slice max)")
    field_ax.set_ylabel(f"{_symbol(trace)} ({trace.unit})")
    scale = 100.0 * trace.unit_fraction
    secondary = field_ax.secondary_yaxis(
        "right", functions=(lambda v: v * scale, lambda p: p / scale)
    )
    secondary.set_ylabel(f"% of {trace.fraction_of}", fontsize="small")
    lost_ax.plot(steps, 100.0 * trace.foreground_lost, marker=".", color="tab:red")
    lost_ax.set_ylabel("foreground lost (%)")
    d_ax.plot(steps, 100.0 * trace.d_acc_real, marker=".", label="real (unlabeled)")
    d_ax.plot(steps, 100.0 * trace.d_acc_fake, marker=".", label="fake (generated)")
    d_ax.axhline(50.0, color="gray", linewidth=0.6)
    d_ax.set_ylim(-5.0, 105.0)
    d_ax.set_ylabel("D accuracy (%)")
    adv_ax.plot(steps, trace.adv_loss, marker=".", color="tab:purple", label="L_adv,G")
    adv_ax.axhline(BALANCED_ADV_LOSS, color="gray", linestyle=":", label="log 2 (balanced)")
    adv_ax.set_ylabel("L_adv,G")
    if np.all(np.isnan(trace.validation_dice)):
        dice_ax.text(
            0.5, 0.5, "no validation (last step kept)", ha="center", transform=dice_ax.transAxes
        )
    else:
        dice_ax.plot(steps, trace.validation_dice, marker=".", label="validation Dice (raw)")
        dice_ax.plot(steps, trace.selection_score, linestyle=":", label="selection score")
    dice_ax.set_ylim(0.0, 1.0)
    dice_ax.set_ylabel("validation Dice")
    dice_ax.set_xlabel("iteration")
    for ax in axes:
        ax.axvline(
            trace.chosen_step,
            color="black",
            linestyle="--",
            linewidth=0.8,
            label="chosen checkpoint",
        )
        ax.grid(alpha=0.3)
    for ax in (field_ax, d_ax, adv_ax, dice_ax):
        ax.legend(fontsize="x-small", loc="best")


def _symbol(trace: StageTrace) -> str:
    return "v" if trace.kind == "deformation" else "ΔI"


def plot_generator_diagnostics(traces: Mapping[str, StageTrace], path: Path, title: str) -> Path:
    """Draw :func:`draw_generator_diagnostics` into the PNG ``path`` (Agg); returns ``path``."""
    draw_generator_diagnostics(traces, title).savefig(path, dpi=90)
    return Path(path)


def write_run_diagnostics(run_dir: Path, *, spacing_mm: float, crop_size: int) -> dict | None:
    """Write ``<run_dir>/figures/generator_diagnostics.png`` and ``generator_diagnostics.json``.

    The JSON holds the geometry and :func:`summarise_stage` of every generator stage with
    metrics. Returns its content, or ``None`` (nothing written) when no stage has metrics.
    """
    run_dir = Path(run_dir)
    traces = read_run_traces(run_dir, spacing_mm=spacing_mm, crop_size=crop_size)
    if not traces:
        return None
    (run_dir / "figures").mkdir(parents=True, exist_ok=True)
    plot_generator_diagnostics(traces, run_dir / "figures" / FIGURE_NAME, run_dir.name)
    summary = {
        "run": run_dir.name,
        "spacing_mm": spacing_mm,
        "crop_size": crop_size,
        "field_of_view_mm": spacing_mm * crop_size,
        "stages": {stage: summarise_stage(trace) for stage, trace in traces.items()},
    }
    write_json_atomic(run_dir / SUMMARY_NAME, summary)
    return summary

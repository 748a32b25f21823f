"""The "Generator diagnostics" section of ``tfaug report``: tables and figures per run group.

Every directory of a runs folder that trains generators of its own (the shared
``<dataset>-nl<N>-generators-split<k>-seed<s>[-<mode>][-<tag>]`` directories, runs trained
before generators were shared, and ``unimatch_gdgi_joint`` runs, whose consistency stage
trains them) is one *generator run*. In a folder of records (``tfaug records``) every run
holds a copy of the shared stages it linked to; copies with the same generator directory
and the same logs are one generator run, named by that directory, as in the runs folder.
Its traces are read with
:mod:`tfaug.analysis.diagnostics` and shown at their chosen checkpoints, one row per
generator; runs are then averaged per (dataset, N_L, generator mode, tag, where the
generators were trained) group, and one figure per group is drawn. Nothing is trained or
evaluated.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfaug.analysis.diagnostics import (
    BALANCED_ADV_LOSS,
    GENERATOR_STAGES,
    JOINT_TRACES,
    SHORT_NAMES,
    TRACE_KEYS,
    DiagnosticsError,
    StageTrace,
    plot_generator_diagnostics,
    read_run_traces,
    summarise_stage,
)
from tfaug.config import Config, ConfigError, config_from_dict, read_yaml
from tfaug.experiments.records import STAGE_METRICS
from tfaug.methods import CONSISTENCY_STAGE, FINAL_STAGE_GENERATORS
from tfaug.runs.rundir import run_name
from tfaug.runs.shared import generator_config

_COLUMNS = (
    "G",
    "field mean (% FOV or range)",
    "field peak (% FOV or range)",
    "fg lost",
    "D acc real / fake",
    "L_adv,G",
    "chosen step / iterations",
    "val. Dice",
)


@dataclass(frozen=True)
class GeneratorRun:
    """A directory that trained generators of its own (not links), with its coordinates.

    Attributes:
        name: the directory name.
        dataset, n_labeled, draw, seed, mode, tag: from its ``config.yaml``.
        stages: the trace keys of the generators it trained, in :data:`TRACE_KEYS` order:
            its generator stage folders, or the generators of its consistency stage.
        traces: trace key → trace, for those with ``metrics.jsonl`` rows.
    """

    name: str
    dataset: str
    n_labeled: int
    draw: int
    seed: int
    mode: str
    tag: str
    stages: tuple[str, ...]
    traces: dict[str, StageTrace]

    @property
    def trained_jointly(self) -> bool:
        """Whether its generators were trained inside its consistency stage."""
        return any(stage in JOINT_TRACES for stage in self.stages)

    @property
    def group(self) -> tuple[str, int, str, str, bool]:
        """(dataset, N_L, generator mode, tag, trained jointly): the runs averaged together."""
        return (self.dataset, self.n_labeled, self.mode, self.tag, self.trained_jointly)


def _read_config(path: Path) -> Config:
    try:
        return config_from_dict(read_yaml(path))
    except ConfigError as error:
        raise DiagnosticsError(
            f"{path}: expected the config.yaml a run writes, found an invalid one ({error}). "
            "Move the directory out of the runs folder or restore its config.yaml."
        ) from error


def _own_stages(folder: Path) -> tuple[str, ...]:
    """The trace keys of the generators ``folder`` trained itself: its generator stage
    folders that are real folders, not links, and the generators of the consistency stage
    of a method that trains them there."""
    stages = (folder / "checkpoints" / stage for stage in GENERATOR_STAGES)
    own = [s.name for s in stages if s.is_dir() and not s.is_symlink()]
    try:
        method = read_yaml(folder / "config.yaml").get("method")
    except ConfigError as error:
        raise DiagnosticsError(
            f"{error}. Move the directory out of the runs folder or restore its config.yaml."
        ) from error
    if method in FINAL_STAGE_GENERATORS and (folder / "checkpoints" / CONSISTENCY_STAGE).is_dir():
        own += [key for key, kind in JOINT_TRACES.items() if kind in FINAL_STAGE_GENERATORS[method]]
    return tuple(own)


def _stage_logs(folder: Path, stages: Sequence[str]) -> tuple[bytes, ...]:
    """The bytes of each stage's ``metrics.jsonl`` (empty when it has none)."""
    paths = (folder / "checkpoints" / stage / STAGE_METRICS for stage in stages)
    return tuple(path.read_bytes() if path.is_file() else b"" for path in paths)


def find_generator_runs(runs_dir: Path) -> list[GeneratorRun]:
    """Every ``<runs_dir>/*/`` with generator stage folders of its own, sorted by name.

    Run folders whose stages are links into a generator directory are not listed again;
    neither are records whose generator stages repeat, log for log, those of an earlier
    folder with the same generator directory (the copies ``tfaug records`` makes of one
    shared stage). Generator stages are named by the generator directory their config
    shares them in (:func:`tfaug.runs.shared.generator_config`), generators trained in a
    consistency stage by their run. ``*.replaced-*`` folders are skipped.

    Raises:
        DiagnosticsError: a listed directory's ``config.yaml`` is not a valid config; see
            also :func:`tfaug.analysis.diagnostics.read_stage_trace`.
    """
    found: dict[tuple[str, tuple[bytes, ...]], GeneratorRun] = {}
    for config_path in sorted(Path(runs_dir).glob("*/config.yaml")):
        folder = config_path.parent
        if ".replaced-" in folder.name:
            continue
        stages = _own_stages(folder)
        if not stages:
            continue
        cfg = _read_config(config_path)
        jointly = any(stage in JOINT_TRACES for stage in stages)
        name = folder.name if jointly else run_name(generator_config(cfg))
        key = (name, _stage_logs(folder, stages))
        if key in found:
            continue
        found[key] = GeneratorRun(
            name=name,
            dataset=cfg.data.dataset,
            n_labeled=cfg.split.n_labeled,
            draw=cfg.split.draw,
            seed=cfg.train.seed,
            mode=cfg.train.generator_mode,
            tag=cfg.tag,
            stages=stages,
            traces=read_run_traces(
                folder,
                spacing_mm=cfg.preprocess.spacing_mm,
                crop_size=cfg.preprocess.crop_size,
            ),
        )
    return sorted(found.values(), key=lambda run: run.name)


def _mean(values: Sequence[float | None], scale: float = 1.0, digits: int = 2) -> str:
    """``m``, or ``m ± s`` (population std), of the present values × scale; ``–`` if none."""
    present = np.array([v for v in values if v is not None], np.float64) * scale
    if len(present) == 0:
        return "–"
    if len(present) == 1:
        return f"{present[0]:.{digits}f}"
    return f"{present.mean():.{digits}f} ± {present.std():.{digits}f}"


def stage_cells(summaries: Sequence[dict]) -> list[str]:
    """Table cells (after the G column) of one stage, or the mean of a group's stages.

    Args:
        summaries: :func:`tfaug.analysis.diagnostics.summarise_stage` results of the same kind.

    Returns:
        field mean and peak (``"2.50 mm (3.9 %)"`` for GV, ``"0.031 (3.1 %)"`` for GI),
        foreground lost (%), D accuracy real / fake (%), L_adv,G, chosen step / iterations
        (a range when they differ; "unfinished" if any stage is), raw validation Dice, all
        at the chosen steps.
    """
    chosen = [s["chosen"] or {} for s in summaries]
    millimetres = summaries[0]["field_unit"] == "mm"

    def field(which: str) -> str:
        value = _mean([c.get(which) for c in chosen], digits=2 if millimetres else 3)
        fraction = _mean([c.get(f"{which}_fraction") for c in chosen], 100.0, 1)
        return f"{value}{' mm' if millimetres else ''} ({fraction} %)"

    iterations = [s["iterations"] for s in summaries]
    if None in iterations:
        total = "unfinished"
    else:
        low, high = min(iterations), max(iterations)
        total = str(low) if low == high else f"{low}–{high}"
    return [
        field("field_mean"),
        field("field_peak"),
        _mean([c.get("foreground_lost") for c in chosen], 100.0, 1) + " %",
        f"{_mean([c.get('d_acc_real') for c in chosen], 100.0, 0)} / "
        f"{_mean([c.get('d_acc_fake') for c in chosen], 100.0, 0)} %",
        _mean([c.get("adv_loss") for c in chosen]),
        f"{_mean([s['chosen_step'] for s in summaries], digits=0)} / {total}",
        _mean([c.get("validation_dice") for c in chosen], digits=3),
    ]


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def _header(columns: Sequence[str]) -> list[str]:
    return [_row(columns), "|" + "---|" * len(columns)]


def diagnostics_section(runs_dir: Path, out_dir: Path) -> list[str]:
    """Markdown of the "Generator diagnostics" section; figures are written into ``out_dir``.

    A row per (generator run, stage) at the chosen step ("no diagnostics" for a stage
    without ``metrics.jsonl``), a table of means per (dataset, N_L, mode, tag) group, and
    the figure of each group's first run (lowest draw, then seed) as
    ``diagnostics-<dataset>-nl<N>-<mode>[-<tag>].png``. Empty when no generator run exists.
    """
    runs = find_generator_runs(runs_dir)
    if not runs:
        return []
    lines = [
        "## Generator diagnostics",
        "",
        "Each generator stage at its chosen checkpoint (how to read it: docs/diagnostics.md): "
        "field mean and peak length (GV in mm and % of the field of view, GI in normalised "
        "intensity and % of the p2-p98 range), the share of foreground label mass the warp "
        "removed, discriminator accuracy on real / generated images, L_adv,G (a balanced game "
        f"gives log 2 = {BALANCED_ADV_LOSS:.2f}) and the raw validation Dice.",
        "",
        *_header(["dataset", "N_L", "draw", "seed", "mode", "tag", *_COLUMNS]),
    ]
    for run in runs:
        where = [run.dataset, run.n_labeled, run.draw, run.seed, run.mode, run.tag or "–"]
        for stage in run.stages:
            if stage in run.traces:
                cells = stage_cells([summarise_stage(run.traces[stage])])
            else:
                cells = ["no diagnostics (no metrics.jsonl)", *["–"] * (len(_COLUMNS) - 2)]
            lines.append(_row([*where, SHORT_NAMES[stage], *cells]))
    return [*lines, "", *_group_lines(runs, Path(out_dir))]


def _group_lines(runs: Sequence[GeneratorRun], out_dir: Path) -> list[str]:
    groups: dict[tuple[str, int, str, str, bool], list[GeneratorRun]] = defaultdict(list)
    for run in runs:
        if run.traces:
            groups[run.group].append(run)
    if not groups:
        return []
    lines = [
        "Mean ± std over the generator runs of each group, at their chosen steps:",
        "",
        *_header(["dataset", "N_L", "mode", "tag", "runs", *_COLUMNS]),
    ]
    figures = []
    for group in sorted(groups):
        dataset, n_labeled, mode, tag, jointly = group
        members = sorted(groups[group], key=lambda r: (r.draw, r.seed))
        for stage in TRACE_KEYS:
            summaries = [summarise_stage(r.traces[stage]) for r in members if stage in r.traces]
            if summaries:
                where = [dataset, n_labeled, mode, tag or "–", len(summaries), SHORT_NAMES[stage]]
                lines.append(_row([*where, *stage_cells(summaries)]))
        name = f"diagnostics-{dataset}-nl{n_labeled}-{mode}{f'-{tag}' if tag else ''}"
        name += "-in-consistency.png" if jointly else ".png"
        plot_generator_diagnostics(members[0].traces, out_dir / name, members[0].name)
        figures += [f"![Generator diagnostics of {members[0].name}]({name})", ""]
    return [*lines, "", *figures]

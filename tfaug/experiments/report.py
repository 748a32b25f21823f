"""The method comparison: a markdown report over the finished runs of a runs directory.

Every ``<runs_dir>/*/results.json`` (written last by a run, so only finished runs count) is
read. Runs are grouped into *settings* ``(dataset, N_L, generator mode)``; within a setting
runs are told apart by their *method label*: the method, with `` [<tag>]`` for runs with a
``tag`` in their config.yaml (``gdgi`` and ``gdgi [b]`` are two rows). Every number is
computed over all runs × test volumes (docs/method.md §7 "Evaluation"):

- mean (std) 3D Dice per structure and method, with the runs and volumes it rests on;
- the paper's three Wilcoxon signed-rank tests (GD vs RD, GI vs RI, GD+GI vs the best
  other method), two-sided, paired per (test volume, draw, seed), ``scipy.stats.wilcoxon``;
  each tagged variant of GD, GI or GD+GI is also tested against the same baseline and
  against its untagged method, and any pair of labels can be asked for (``compare``);
  each of these pairs is also tested per run (the runs' mean foreground Dice, paired per
  (draw, seed)), the conservative check: the volumes of one run share one trained model;
- box plots per structure (Fig. 2) and mean Dice per test subject (Fig. 9);
- the budget and model-selection check (:mod:`tfaug.experiments.selection_report`): has
  each method's validation curve flattened, and does the ranking change with the last or
  the wide-validation checkpoint;
- the compared pairs again at equal training time (:mod:`tfaug.experiments.equal_time`),
  when the runs kept budget marks: the costlier run of each pair as it stood at the other's
  time, by the wall clock or, on a shared machine, by the process's CPU time (``clock``);
  and each method's test Dice against its training time, from the same marks;
- the runs missing from the grid inferred as methods × draws × seeds present.

Across settings: Dice against N_L (Fig. 3c) when several N_L exist, and joint vs
independent generator training (Table I) when both exist; the generator stages'
diagnostics (:mod:`tfaug.experiments.diagnostics_report`). Nothing is trained or evaluated
here; Dice values are taken from the results files as they are.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tfaug.analysis.diagnostics import DiagnosticsError
from tfaug.experiments import plots
from tfaug.experiments.diagnostics_report import diagnostics_section
from tfaug.experiments.equal_time import equal_time_runs, marks, time_curves
from tfaug.experiments.results import (
    CLOCK_WORDS,
    MEAN,
    ReportError,
    RunResult,
    WilcoxonResult,
    best_other_method,
    dice_values,
    keyed_values,
    load_runs,
    missing_runs,
    ordered_methods,
    paired_arrays,
    run_means,
    signed_rank,
    structures_of,
    subject_means,
    unfinished_runs,
    wilcoxon_test,
)
from tfaug.experiments.selection_report import selection_section

# The paper's comparisons (Fig. 2): (proposed, baseline); None = the best related method,
# i.e. the best method that does not use the learned generators.
COMPARISONS: tuple[tuple[str, str | None], ...] = (("gd", "rd"), ("gi", "ri"), ("gdgi", None))
SIGNIFICANCE = 0.05  # the paper's threshold
PER_RUN_HEADER = ("| comparison | runs | ahead | Δ | p |", "|---|---|---|---|---|")


def per_run_row(
    left: dict[tuple[str, int, int], float],
    right: dict[tuple[str, int, int], float],
    a: str,
    b: str,
) -> str:
    """A markdown row: the :func:`run_means` ``left`` (of ``a``) vs ``right`` (of ``b``)
    paired per run, with the runs ``a`` is ahead in and the two-sided Wilcoxon test of the
    run means (exact for small n)."""
    x, y = paired_arrays(left, right)
    test = signed_rank(x, y, a, b, MEAN)
    delta, p = _difference_and_p(test)
    return f"| {a} vs {b} | {test.n} | {int(np.sum(x > y))} | {delta} | {p} |"


def _cell(values: np.ndarray) -> str:
    return f"{values.mean():.3f} ({values.std():.3f})"


def _label(structure: str) -> str:
    return "mean (fg)" if structure == MEAN else structure


def _p(p: float | None) -> str:
    return "–" if p is None else f"{p:.2g}"


def method_table(runs: Sequence[RunResult], structures: Sequence[str]) -> list[str]:
    """Markdown rows: method | mean (std) per structure | runs | volumes | training time.

    The training time is the median over the method's runs of :attr:`RunResult.training_s`,
    in minutes ("–" when no run records it)."""
    header = ["method", *map(_label, structures), "runs", "volumes", "training, min/run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in ordered_methods({r.label for r in runs}):
        own = [r for r in runs if r.label == method]
        cells = [_cell(dice_values(own, method, s)) for s in structures]
        volumes = sum(len(r.dice) for r in own)
        seconds = [r.training_s for r in own if r.training_s is not None]
        minutes = f"{np.median(seconds) / 60:.1f}" if seconds else "–"
        lines.append(
            f"| {method} | " + " | ".join(cells) + f" | {len(own)} | {volumes} | {minutes} |"
        )
    return lines


def tagged_comparisons(runs: Sequence[RunResult]) -> list[tuple[str, str]]:
    """Each tagged variant of a proposed method (e.g. ``gdgi [b]``) against the baseline of
    its paper comparison (rd, ri or the best related method) and against its untagged method
    (the paper's setting), in :data:`COMPARISONS` order."""
    labels = ordered_methods({r.label for r in runs})
    pairs = []
    for a, baseline in COMPARISONS:
        b = baseline or best_other_method(runs)
        for label in labels:
            if label.startswith(f"{a} ["):
                pairs += [(label, b)] if b is not None else []
                pairs.append((label, a))
    return pairs


def parse_comparison(text: str) -> tuple[str, str]:
    """``"gdgi [b],aff"`` → ``("gdgi [b]", "aff")``: two method labels for one extra test.

    Raises:
        ReportError: not two non-empty labels separated by one comma.
    """
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ReportError(
            f"--compare {text!r}: expected two method labels separated by a comma, e.g. "
            "--compare 'gdgi [b],aff' (labels as in the report's tables)"
        )
    return parts[0], parts[1]


def _test_rows(runs: Sequence[RunResult], a: str, b: str, structures: Sequence[str]) -> list[str]:
    return [_test_row(wilcoxon_test(runs, a, b, structure)) for structure in structures]


def _difference_and_p(test: WilcoxonResult) -> tuple[str, str]:
    """The Δ and p cells of a test: "–" when missing, the note after p, `*` if significant."""
    delta = "–" if test.difference is None else f"{test.difference:+.3f}"
    p = _p(test.p) + (f" ({test.note})" if test.note else "")
    star = " *" if test.p is not None and test.p < SIGNIFICANCE else ""
    return delta, p + star


def _test_row(test: WilcoxonResult) -> str:
    delta, p = _difference_and_p(test)
    w = "–" if test.statistic is None else f"{test.statistic:.1f}"
    comparison = f"{test.a} vs {test.b}"
    return f"| {comparison} | {_label(test.structure)} | {test.n} | {delta} | {w} | {p} |"


def wilcoxon_section(
    runs: Sequence[RunResult],
    structures: Sequence[str],
    compare: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """Markdown of the paper's three tests, then :func:`tagged_comparisons` and the
    ``compare`` pairs of method labels (each pair once; pairs with neither label in ``runs``
    are left out); a note in place of each test that cannot run."""
    present = {r.label for r in runs}
    rows, run_rows, notes = [], [], []
    for a, baseline in COMPARISONS:
        b = baseline or best_other_method(runs)
        missing = [m for m in (a, b) if m is not None and m not in present]
        missing += ["a related method"] if b is None else []
        if missing:
            notes.append(f"{a} vs {b or 'best related'}: skipped, no runs of {', '.join(missing)}.")
            continue
        if baseline is None:
            notes.append(f"Best related method (highest mean foreground Dice, no generators): {b}.")
        rows += _test_rows(runs, a, b, structures)
        run_rows.append(per_run_row(run_means(runs, a), run_means(runs, b), a, b))
    for a, b in dict.fromkeys([*tagged_comparisons(runs), *compare]):  # each pair once
        missing = [m for m in (a, b) if m not in present]
        if len(missing) == 2:
            continue  # a pair of another setting
        if missing:
            notes.append(f"{a} vs {b}: skipped, no runs of {', '.join(missing)}.")
            continue
        rows += _test_rows(runs, a, b, structures)
        run_rows.append(per_run_row(run_means(runs, a), run_means(runs, b), a, b))
    lines = [
        "Two-sided Wilcoxon signed-rank tests (scipy.stats.wilcoxon), paired per "
        f"(test volume, draw, seed); n = pairs, Δ = mean Dice difference (first − second), "
        f"* = p < {SIGNIFICANCE}.",
        "",
    ]
    if rows:
        lines += [
            "| comparison | structure | n | Δ | W | p |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "The same pairs per run: each run's mean foreground Dice over its test volumes, "
            "paired per (draw, seed). The volumes of one run share one trained segmenter, so "
            "the tests above count correlated pairs as independent; this one does not, and "
            "needs more runs to reach significance (with 5 runs, p ≥ 0.0625).",
            "",
            *PER_RUN_HEADER,
            *run_rows,
            "",
        ]
    return lines + notes


def equal_time_section(
    runs: Sequence[RunResult], compare: Sequence[tuple[str, str]] = (), clock: str = "wall"
) -> list[str]:
    """Markdown of the tagged and ``compare`` pairs at equal training time by ``clock`` (the
    clock ``runs`` were loaded with); no lines unless a run kept budget marks
    (``train.budget_marks``)."""
    if not any(marks(r) for r in runs):
        return []
    present = {r.label for r in runs}
    rows, notes = [], []
    for a, b in dict.fromkeys([*tagged_comparisons(runs), *compare]):
        if a not in present or b not in present:
            continue
        paired, cuts, left_out = equal_time_runs(runs, a, b, clock)
        notes += [f"{a} vs {b}: pair left out, {note}." for note in left_out]
        if not cuts:
            continue
        volumes = wilcoxon_test(paired, a, b, MEAN)
        x, y = paired_arrays(run_means(paired, a), run_means(paired, b))
        per_run = signed_rank(x, y, a, b, MEAN)
        described = []
        for label in dict.fromkeys(cut.label for cut in cuts):
            shares = [cut.mark / cut.iterations for cut in cuts if cut.label == label]
            described.append(f"{label} in {len(shares)}, at {np.median(shares):.0%}")
        cells = [*_difference_and_p(volumes), str(int(np.sum(x > y))), *_difference_and_p(per_run)]
        rows.append(
            f"| {a} vs {b} | {per_run.n} | {'; '.join(described)} | " + " | ".join(cells) + " |"
        )
    lines = [
        f"### Equal {CLOCK_WORDS[clock][0]} time",
        "",
        "Each compared pair of runs (same draw and seed) again, with the costlier run as it "
        "stood when it had trained as long as the other: the checkpoint it had chosen by its "
        "latest budget mark within the other's training time (a mark's time: the stages "
        "before the final one plus the final stage's time × mark / iterations). *cut* names "
        "the runs replaced so, and the median share of their final stage they had used. Δ and "
        "p as above, per (test volume, draw, seed), then per run.",
        "",
        "| comparison | runs | cut (median share of the final stage) | Δ | p | ahead "
        "| Δ per run | p per run |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    return lines + [""] + notes + ([""] if notes else [])


def time_section(
    runs: Sequence[RunResult], out_dir: Path, slug: str, clock: str = "wall"
) -> list[str]:
    """Markdown (and a PNG in ``out_dir``) of each method's test Dice against its training
    time by ``clock``, from the budget marks (:func:`time_curves`); no lines without them."""
    curves = time_curves(runs)
    if not curves:
        return []
    methods = ordered_methods(set(curves))
    words = CLOCK_WORDS[clock]
    path = plots.save_time_curves(
        {m: ([p.minutes for p in curves[m]], [p.dice for p in curves[m]]) for m in methods},
        out_dir / f"{slug}-time.png",
        slug,
        words[1],
    )
    shares = sorted({p.share for points in curves.values() for p in points})
    rows = []
    for method in methods:
        by_share = {p.share: p for p in curves[method]}
        cells = [
            f"{by_share[s].dice:.3f} ({by_share[s].minutes:.1f})" if s in by_share else "–"
            for s in shares
        ]
        rows.append(
            f"| {method} | {max(p.runs for p in curves[method])} | " + " | ".join(cells) + " |"
        )
    return [
        f"### Test Dice against {words[1]}",
        "",
        "What each method delivers if stopped earlier: the mean test Dice (over runs × test "
        "volumes) of the checkpoint it had chosen by each share of its final stage "
        "(`train.budget_marks`; 100 %: its final choice), and in brackets the median "
        f"{words[1]} in minutes it had trained by then (earlier stages included). Read down "
        "a column for equal iterations; compare the minutes for equal cost.",
        "",
        "| method | runs | " + " | ".join(f"{s:.0%}" for s in shares) + " |",
        "|---|---|" + "---|" * len(shares),
        *rows,
        "",
        f"![Test Dice against {words[1]}]({path.name})",
        "",
    ]


def _setting_title(setting: tuple[str, int, str]) -> str:
    dataset, n_labeled, mode = setting
    return f"{dataset}, N_L = {n_labeled}, {mode} generators"


def _slug(setting: tuple[str, int, str]) -> str:
    dataset, n_labeled, mode = setting
    return f"{dataset}-nl{n_labeled}-{mode}"


def setting_section(
    runs: Sequence[RunResult],
    setting: tuple[str, int, str],
    out_dir: Path,
    compare: Sequence[tuple[str, str]] = (),
    clock: str = "wall",
) -> list[str]:
    """Markdown (and PNGs in ``out_dir``) for the runs of one setting; ``compare``: extra
    Wilcoxon tests as pairs of method labels; ``clock``: the clock ``runs`` were loaded
    with."""
    structures = structures_of(runs)
    methods = ordered_methods({r.label for r in runs})
    title = _setting_title(setting)
    labels = [_label(s) for s in structures]
    box = {m: {_label(s): dice_values(runs, m, s) for s in structures} for m in methods}
    box_path = plots.save_box_plots(box, labels, out_dir / f"{_slug(setting)}-box.png", title)
    per_subject = {m: subject_means(runs, m) for m in methods}
    subject_path = plots.save_per_subject_plot(
        per_subject, out_dir / f"{_slug(setting)}-subjects.png", title
    )
    lines = [
        f"## {title}",
        "",
        "Mean (std) 3D Dice over all runs × test volumes; *runs* and *volumes* give how many "
        f"numbers each row rests on. *training* is the median {CLOCK_WORDS[clock][1]} of a "
        "run's training stages (shared generator stages included): it compares methods at "
        "equal iterations by their cost"
        + (
            ", and only runs that shared the machine in the same way."
            if clock == "wall"
            else " (the process's CPU seconds, which a suspended process or other jobs on the "
            "machine do not inflate)."
        ),
        "",
        *method_table(runs, structures),
        "",
        *wilcoxon_section(runs, structures, compare),
        "",
        f"![Dice per structure]({box_path.name})",
        "",
        f"![Mean Dice per test subject]({subject_path.name})",
        "",
    ]
    lines += selection_section(runs, out_dir, _slug(setting))
    lines += equal_time_section(runs, compare, clock)
    lines += time_section(runs, out_dir, _slug(setting), clock)
    missing = missing_runs(runs)
    draws = sorted({r.draw for r in runs})
    seeds = sorted({r.seed for r in runs})
    grid = f"methods {methods} × draws {draws} × seeds {seeds}"
    if missing:
        listed = ", ".join(f"{m} draw {d} seed {s}" for m, d, s in missing)
        lines.append(f"**Missing runs** ({len(missing)} of the grid {grid}): {listed}.")
    else:
        lines.append(f"Grid complete: {grid}, {len(runs)} runs.")
    return lines + [""]


def dice_vs_nl_section(runs: Sequence[RunResult], out_dir: Path) -> list[str]:
    """Fig. 3c: per dataset (joint generators), when more than one N_L is present."""
    lines = []
    for dataset in sorted({r.dataset for r in runs}):
        own = [r for r in runs if r.dataset == dataset and r.generator_mode == "joint"]
        nls = sorted({r.n_labeled for r in own})
        if len(nls) < 2:
            continue
        structures = structures_of(own)
        curves: dict[str, dict[int, dict[str, tuple[float, float]]]] = defaultdict(dict)
        rows = [
            "| method | " + " | ".join(f"N_L = {n}" for n in nls) + " |",
            "|" + "---|" * (len(nls) + 1),
        ]
        for method in ordered_methods({r.label for r in own}):
            cells = []
            for n in nls:
                subset = [r for r in own if r.n_labeled == n]
                values = {s: dice_values(subset, method, s) for s in structures}
                if len(values[MEAN]) == 0:
                    cells.append("–")
                    continue
                curves[method][n] = {
                    s: (float(v.mean()), float(v.std())) for s, v in values.items()
                }
                runs_n = sum(r.label == method for r in subset)
                cells.append(f"{_cell(values[MEAN])}, {runs_n} runs / {len(values[MEAN])} vol.")
            rows.append(f"| {method} | " + " | ".join(cells) + " |")
        path = plots.save_dice_vs_nl_plot(
            curves, structures, out_dir / f"{dataset}-dice-vs-nl.png", f"{dataset}: Dice vs N_L"
        )
        lines += [
            f"## {dataset}: Dice against N_L (joint generators)",
            "",
            "Mean foreground Dice, mean (std) over runs × test volumes.",
            "",
            *rows,
            "",
            f"![Dice against N_L]({path.name})",
            "",
        ]
    return lines


def joint_vs_independent_section(runs: Sequence[RunResult]) -> list[str]:
    """Table I: (dataset, N_L, method) with runs in both generator modes, then a Wilcoxon
    test of joint vs independent per structure, paired per (test volume, draw, seed)."""
    modes = defaultdict(set)
    for r in runs:
        modes[(r.dataset, r.n_labeled, r.label)].add(r.generator_mode)
    both = sorted(key for key, found in modes.items() if {"joint", "independent"} <= found)
    if not both:
        return []
    structures = structures_of([r for r in runs if (r.dataset, r.n_labeled, r.label) in both])
    header = ["dataset", "N_L", "method", "generators", *map(_label, structures), "runs", "volumes"]
    lines = [
        "## Joint vs independent generator training (Table I)",
        "",
        "Independent: the segmentation loss does not reach the generators. Mean (std) Dice.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    tests, run_rows = [], []
    for dataset, n_labeled, method in both:
        by_mode = {
            mode: [r for r in runs if r.setting == (dataset, n_labeled, mode)]
            for mode in ("joint", "independent")
        }
        for mode, own in by_mode.items():
            cells = [_cell(dice_values(own, method, s)) for s in structures]
            n_runs = sum(r.label == method for r in own)
            volumes = len(dice_values(own, method, MEAN))
            lines.append(
                f"| {dataset} | {n_labeled} | {method} | {mode} | "
                + " | ".join(cells)
                + f" | {n_runs} | {volumes} |"
            )
        name = f"{method} ({dataset}, N_L = {n_labeled}) joint"
        for s in structures:
            joint, independent = (keyed_values(own, method, s) for own in by_mode.values())
            tests.append(signed_rank(*paired_arrays(joint, independent), name, "independent", s))
        joint, independent = (run_means(own, method) for own in by_mode.values())
        run_rows.append(per_run_row(joint, independent, name, "independent"))
    return [
        *lines,
        "",
        "Joint minus independent, two-sided Wilcoxon signed-rank tests paired per (test volume, "
        f"draw, seed); * = p < {SIGNIFICANCE}.",
        "",
        "| comparison | structure | n | Δ | W | p |",
        "|---|---|---|---|---|---|",
        *map(_test_row, tests),
        "",
        "Per run (mean foreground Dice of each run, paired per (draw, seed)):",
        "",
        *PER_RUN_HEADER,
        *run_rows,
        "",
    ]


def build_report(
    runs_dir: Path, out_dir: Path, compare: Sequence[tuple[str, str]] = (), clock: str = "wall"
) -> str:
    """The markdown text of the report; figures are written into ``out_dir``.

    Args:
        runs_dir: the folder of run directories.
        out_dir: where the figures go.
        compare: extra Wilcoxon tests, pairs of method labels (``("gdgi [b]", "aff")``),
            run in every setting holding both.
        clock: ``wall`` or ``cpu``: the training times the report shows and compares at
            (:func:`tfaug.experiments.results.load_runs`).

    Raises:
        ReportError: no finished run in ``runs_dir``, a malformed results file, a
            ``compare`` label no run has, or an unreadable generator stage.
    """
    runs = load_runs(runs_dir, clock)
    if not runs:
        raise ReportError(
            f"{runs_dir}: no finished run (no */results.json); run `tfaug grid` or "
            "`tfaug train` with --runs-dir pointing here first"
        )
    labels = ordered_methods({r.label for r in runs})
    unknown = sorted({label for pair in compare for label in pair} - set(labels))
    if unknown:
        raise ReportError(
            f"--compare: no finished run in {runs_dir} has the method label(s) {unknown}; "
            f"the labels are {labels}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = sorted({r.setting for r in runs}, key=lambda s: (s[0], s[1], s[2] != "joint", s[2]))
    lines = [
        "# Method comparison",
        "",
        f"{len(runs)} finished runs from `{runs_dir}` in {len(settings)} setting(s).",
        "",
    ]
    unfinished = unfinished_runs(runs_dir)
    if unfinished:
        lines += [f"**Unfinished runs** (not counted): {', '.join(unfinished)}.", ""]
    for setting in settings:
        own = [r for r in runs if r.setting == setting]
        lines += setting_section(own, setting, out_dir, compare, clock)
    lines += dice_vs_nl_section(runs, out_dir)
    lines += joint_vs_independent_section(runs)
    try:
        lines += diagnostics_section(runs_dir, out_dir)
    except DiagnosticsError as error:
        raise ReportError(str(error)) from error
    return "\n".join(lines)


def write_report(
    runs_dir: Path, out_dir: Path, compare: Sequence[tuple[str, str]] = (), clock: str = "wall"
) -> Path:
    """Write ``<out_dir>/report.md`` and its PNG figures; returns the report's path.

    Raises:
        ReportError: see :func:`build_report`.
    """
    out_dir = Path(out_dir)
    text = build_report(Path(runs_dir), out_dir, compare, clock)
    path = out_dir / "report.md"
    path.write_text(text, encoding="utf-8")
    return path

"""The semi-supervised benchmark's standing on every variant, from the committed records.

    python docs/results/phantom-ssl/summary.py [RECORDS] [--compare "A,B" ...]

RECORDS (default: the records/ folder beside this file) holds one folder of finished runs'
records per phantom variant (``tfaug records``). Prints four Markdown tables:

1. per method and variant, the chosen checkpoint's mean foreground test Dice averaged over
   the finished labeled draws, each draw's own value after it in draw order (named by draw
   when the finished draws are not 0, 1, …), and the median CPU minutes of one run's
   training;
2. per comparison ``A,B`` and variant, A − B per test volume pooled over the draws both have
   finished (two-sided Wilcoxon signed-rank), the number of draws A is ahead in, and the same
   at equal CPU time (the costlier run as it stood at the cheaper one's CPU time);
3. per comparison, the runs paired per (variant, draw) over every variant: the test that does
   not count one run's test volumes as independent pairs;
4. per method and variant, the mean over draws of the test Dice of three checkpoint rules:
   the one chosen on the config's validation volumes, the last step, and the one chosen on
   the wider validation set (``split.n_extra_validation``): whether the rule changes the
   ranking.

The per-variant details (plateaus, checkpoint rules, Dice against time, generator
diagnostics) are ``tfaug report``'s; this table is what the README's summary is built from.
Nothing is trained or evaluated.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tfaug.console import tolerate_ascii_streams
from tfaug.experiments.equal_time import equal_time_runs
from tfaug.experiments.report import parse_comparison
from tfaug.experiments.results import (
    MEAN,
    RunResult,
    load_runs,
    ordered_methods,
    paired_arrays,
    run_means,
    signed_rank,
    wilcoxon_test,
)

VARIANT_ORDER = ("wide", "hard", "default")  # most between-subject variation first
DEFAULT_COMPARISONS = (
    ("unimatch", "rdri"),
    ("unimatch [lrdri]", "rdri"),
    ("unimatch [lrdri]", "heavy"),
    ("unimatch [lrdri]", "gdgi [bdv3R]"),
    ("gdgi [bdv3R]", "rdri"),
    ("heavy", "rdri"),
    ("unimatch_gdgi [bdv3R]", "unimatch [lrdri]"),
    ("unimatch_gdgi_joint [bdv3R]", "unimatch [lrdri]"),
    ("unimatch_gdgi_joint [bdv3R]", "unimatch_gdgi [bdv3R]"),
    ("unimatch_gdgi [bdv3R_labeled]", "unimatch_gdgi [bdv3R]"),
    ("unimatch_gdgi [bdv3R_unlabeled]", "unimatch_gdgi [bdv3R]"),
    ("unimatch_gdgi [bdv3R_replace]", "unimatch_gdgi [bdv3R_unlabeled]"),
)


def load_variants(records: Path) -> dict[str, list[RunResult]]:
    """Variant folder name → its finished runs (CPU clock), wide/hard/default first.

    Raises:
        SystemExit: ``records`` holds no variant folder with a finished run.
    """
    folders = [f for f in sorted(records.iterdir()) if f.is_dir()] if records.is_dir() else []
    order = {name: i for i, name in enumerate(VARIANT_ORDER)}
    folders.sort(key=lambda f: (order.get(f.name, len(order)), f.name))
    variants = {f.name: runs for f in folders if (runs := load_runs(f, "cpu"))}
    if not variants:
        raise SystemExit(
            f"{records}: no variant folder with finished runs' records (results.json); "
            "pass the folder that `tfaug records` filled, one subfolder per variant"
        )
    return variants


def method_cell(runs: Sequence[RunResult], label: str) -> str:
    """``mean (draw values)`` of ``label`` on one variant, or ``–`` without runs.

    The values follow in draw order; when the finished draws are not 0, 1, … (an ablation
    run first on draw 1), each value is named by its draw: ``0.791 (draw 1)``.
    """
    means = run_means(runs, label)
    if not means:
        return "–"
    keys = sorted(means)
    values = [means[key] for key in keys]
    draws = [draw for _, draw, _ in keys]
    mean = f"{np.mean(values):.3f}"
    if draws == list(range(len(draws))):
        return f"{mean} ({', '.join(f'{v:.3f}' for v in values)})" if len(values) > 1 else mean
    if len(values) == 1:
        return f"{mean} (draw {draws[0]})"
    return f"{mean} ({', '.join(f'draw {d}: {v:.3f}' for d, v in zip(draws, values, strict=True))})"


def method_table(variants: dict[str, list[RunResult]]) -> list[str]:
    """Markdown rows: method × variant mean Dice over draws, and median CPU minutes."""
    everything = [r for runs in variants.values() for r in runs]
    lines = [
        "| method | " + " | ".join(f"`{v}`" for v in variants) + " | CPU min per run |",
        "|---|" + "---|" * len(variants) + "---|",
    ]
    for label in ordered_methods(r.label for r in everything):
        minutes = [r.training_s / 60 for r in everything if r.label == label and r.training_s]
        cpu = f"{np.median(minutes):.1f}" if minutes else "–"
        cells = [method_cell(runs, label) for runs in variants.values()]
        lines.append(f"| `{label}` | " + " | ".join(cells) + f" | {cpu} |")
    return lines


def _p(p: float | None) -> str:
    return "–" if p is None else f"{p:.2g}"


def comparison_row(runs: Sequence[RunResult], a: str, b: str) -> str | None:
    """Cells of ``a`` − ``b`` on one variant: draws, Δ, p, draws ahead, then at equal CPU
    time Δ and p; ``None`` when no draw has both."""
    x, y = paired_arrays(run_means(runs, a), run_means(runs, b))
    if not len(x):
        return None
    volumes = wilcoxon_test(runs, a, b, MEAN)
    paired, cuts, _ = equal_time_runs(runs, a, b, "cpu")
    timed = wilcoxon_test(paired, a, b, MEAN) if cuts else None
    timed_cells = [f"{timed.difference:+.3f}", _p(timed.p)] if timed and timed.n else ["–", "–"]
    cells = [
        str(len(x)),
        f"{volumes.difference:+.3f}",
        _p(volumes.p),
        f"{int(np.sum(x > y))} of {len(x)}",
        *timed_cells,
    ]
    return " | ".join(cells)


def comparison_table(
    variants: dict[str, list[RunResult]], comparisons: Sequence[tuple[str, str]]
) -> list[str]:
    """Markdown rows: each comparison on each variant where both labels have a draw."""
    lines = [
        "| A − B | variant | draws | Δ per test volume | p | A ahead | at equal CPU time: Δ | p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a, b in comparisons:
        for variant, runs in variants.items():
            row = comparison_row(runs, a, b)
            if row is not None:
                lines.append(f"| `{a}` − `{b}` | `{variant}` | {row} |")
    return lines


def pooled_run_table(
    variants: dict[str, list[RunResult]], comparisons: Sequence[tuple[str, str]]
) -> list[str]:
    """Markdown rows: each comparison's runs paired per (variant, draw, seed) over every
    variant, with the two-sided Wilcoxon signed-rank test of their mean Dice."""
    lines = [
        "| A − B | run pairs (variants) | Δ per run | A ahead | p |",
        "|---|---|---|---|---|",
    ]
    for a, b in comparisons:
        pairs = {
            v: paired_arrays(run_means(runs, a), run_means(runs, b)) for v, runs in variants.items()
        }
        names = [v for v, (x, _) in pairs.items() if len(x)]
        if not names:
            continue
        x, y = (np.concatenate([pairs[v][i] for v in names]) for i in (0, 1))
        test = signed_rank(x, y, a, b, MEAN)
        lines.append(
            f"| `{a}` − `{b}` | {len(x)} ({', '.join(names)}) | {test.difference:+.3f} | "
            f"{int(np.sum(x > y))} of {len(x)} | {_p(test.p)} |"
        )
    return lines


RULES = ("chosen", "last", "best_wide")  # RunResult.checkpoints names, in column order


def rule_cell(runs: Sequence[RunResult], label: str) -> str:
    """``chosen / last / wide`` mean test Dice over ``label``'s draws on one variant (``–``
    for a rule a run did not record)."""
    own = [r for r in runs if r.label == label]
    if not own:
        return "–"
    means = []
    for rule in RULES:
        values = [r.checkpoints[rule][1] for r in own if rule in r.checkpoints]
        means.append(f"{np.mean(values):.3f}" if len(values) == len(own) else "–")
    return " / ".join(means)


def rule_table(variants: dict[str, list[RunResult]]) -> list[str]:
    """Markdown rows: method × variant test Dice by each checkpoint rule (:data:`RULES`)."""
    everything = [r for runs in variants.values() for r in runs]
    lines = [
        "| method | " + " | ".join(f"`{v}`: chosen / last / wide" for v in variants) + " |",
        "|---|" + "---|" * len(variants),
    ]
    for label in ordered_methods(r.label for r in everything):
        cells = [rule_cell(runs, label) for runs in variants.values()]
        lines.append(f"| `{label}` | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "records",
        nargs="?",
        type=Path,
        default=Path(__file__).parent / "records",
        help="folder of per-variant record folders (default: records/ beside this script)",
    )
    parser.add_argument(
        "--compare",
        action="append",
        type=parse_comparison,
        default=None,
        help='"A,B": report A − B (repeatable; default: the benchmark\'s decisive pairs)',
    )
    args = parser.parse_args()
    tolerate_ascii_streams()  # an ASCII terminal gets \u2212 for "−", not a traceback
    variants = load_variants(args.records)
    print("\n".join(method_table(variants)))
    print()
    comparisons = args.compare or DEFAULT_COMPARISONS
    print("\n".join(comparison_table(variants, comparisons)))
    print()
    print("\n".join(pooled_run_table(variants, comparisons)))
    print()
    print("\n".join(rule_table(variants)))


if __name__ == "__main__":
    main()

"""The finished runs of a runs directory and the statistics that compare them.

Every ``<runs_dir>/*/results.json`` (written last by a run, so only finished runs count) is
read into a :class:`RunResult`: the per-volume test Dice of one run, with its method label
(the method, with `` [<tag>]`` for a tagged run), draw, seed and training time. Paired
Wilcoxon signed-rank tests compare two labels per (test volume, draw, seed), or per run.
No TensorFlow; nothing is trained or evaluated here.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from scipy import stats

from tfaug.io import read_jsonl
from tfaug.methods import LEARNED_AUGMENTATION_METHODS, METHODS

MEAN = "mean"  # the column of the per-volume mean foreground Dice
METHOD_ORDER = METHODS  # the order of a table's rows; unknown methods follow by name


CLOCKS = {"wall": "wall_time_s", "cpu": "cpu_time_s"}
"""Clock name → the results.json record of each stage's training time by that clock."""
CLOCK_WORDS = {"wall": ("wall", "wall-clock time"), "cpu": ("CPU", "CPU time")}
"""Clock name → (its word in a heading, its words in a sentence)."""


class ReportError(ValueError):
    """The runs directory holds no usable results, or a results file is malformed."""


@dataclass(frozen=True)
class RunResult:
    """The test Dice of one finished run.

    Attributes:
        name: the run directory name.
        dataset, n_labeled, generator_mode, method, draw, seed: the run's coordinates.
        dice: test case id → structure → 3D Dice in [0, 1]; structure :data:`MEAN` is the
            volume's mean foreground Dice.
        tag: the ``tag`` of the run's config.yaml ("" when untagged or without the file).
        training_s: seconds of every training stage the run used (shared generator stages
            included, summed over resumed sessions) by the clock it was loaded with (wall or
            CPU, :data:`CLOCKS`); ``None`` when results.json does not record them all.
        checkpoints: the final stage's kept segmenters that were tested, by name →
            ``(step, mean over test volumes of the mean foreground Dice)``: ``"chosen"``
            (the one ``dice`` holds), and when the run recorded them ``"last"`` (the last
            step), ``"best_wide"`` (chosen on the wider validation set) and
            ``"best_at_<mark>"`` (the choice made by step ``mark``, ``train.budget_marks``).
        kept_dice: the same checkpoints' test Dice, name → shaped like ``dice``.
        final_s: seconds of the final stage alone, by the same clock (``None`` when not
            recorded).
        curve: the final stage's validations, ``(step, validation Dice, wide validation
            Dice or None)`` in step order (from its ``metrics.jsonl``; empty without it).
        iterations: the final stage's number of steps (0 when not recorded).
    """

    name: str
    dataset: str
    n_labeled: int
    generator_mode: str
    method: str
    draw: int
    seed: int
    dice: dict[str, dict[str, float]]
    tag: str = ""
    training_s: float | None = None
    checkpoints: dict[str, tuple[int, float]] = field(default_factory=dict)
    curve: tuple[tuple[int, float, float | None], ...] = ()
    iterations: int = 0
    kept_dice: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    final_s: float | None = None

    @property
    def setting(self) -> tuple[str, int, str]:
        return (self.dataset, self.n_labeled, self.generator_mode)

    @property
    def label(self) -> str:
        """The method as the report names it: ``gdgi``, or ``gdgi [b]`` for a run tagged b."""
        return f"{self.method} [{self.tag}]" if self.tag else self.method


@dataclass(frozen=True)
class WilcoxonResult:
    """One two-sided signed-rank test of method ``a`` against ``b`` on one structure.

    ``n`` is the number of (volume, draw, seed) pairs; ``difference`` the mean of a − b;
    ``p`` is ``None`` (with ``note``) when the test cannot be run.
    """

    a: str
    b: str
    structure: str
    n: int
    statistic: float | None
    p: float | None
    difference: float | None
    note: str = ""


def load_runs(runs_dir: Path, clock: str = "wall") -> list[RunResult]:
    """Read ``<runs_dir>/*/results.json``; moved-aside ``*.replaced-*`` runs are ignored.

    ``clock`` (a key of :data:`CLOCKS`) picks the training times: ``wall`` (wall-clock, what
    a user waits) or ``cpu`` (the process's CPU time, which a suspended process or other jobs
    on a shared machine do not inflate).

    Raises:
        ReportError: ``runs_dir`` is not a folder, or results files are malformed (every
            bad file is named in one message).
    """
    if clock not in CLOCKS:
        raise ReportError(f"clock {clock!r}: expected one of {sorted(CLOCKS)}")
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ReportError(f"{runs_dir}: runs directory not found; pass the folder of run dirs")
    runs, problems = [], []
    for path in sorted(runs_dir.glob("*/results.json")):
        if ".replaced-" in path.parent.name:
            continue
        try:
            runs.append(_parse_results(path, CLOCKS[clock]))
        except KeyError as error:
            problems.append(f"{path}: missing key {error}")
        except (OSError, ValueError, TypeError) as error:
            problems.append(f"{path}: {error}")
    if problems:
        raise ReportError(
            "malformed results.json (expected the file a finished `tfaug train` writes): "
            + "; ".join(problems)
            + ". Delete these run directories and run them again."
        )
    return runs


def _parse_results(path: Path, clock_key: str) -> RunResult:
    content = json.loads(path.read_text(encoding="utf-8"))
    dice = _volume_dice(content["test"])
    if not dice:
        raise ValueError("no test volumes")
    final = _final_stage(content)
    kept = content.get("checkpoints") or {}
    times = _stage_seconds(content, clock_key)
    final_s = None if times is None else times.get(str(final.get("name")))
    return RunResult(
        name=path.parent.name,
        dataset=str(content["dataset"]),
        n_labeled=int(content["n_labeled"]),
        generator_mode=str(content.get("generator_mode", "joint")),
        method=str(content["method"]),
        draw=int(content["draw"]),
        seed=int(content["seed"]),
        dice=dice,
        tag=_run_tag(path.parent / "config.yaml"),
        training_s=None if times is None else float(sum(times.values())),
        checkpoints=_checkpoints(content, dice, final),
        curve=_curve(path.parent, final),
        iterations=int(final.get("iterations", 0)),
        kept_dice={name: _volume_dice(checkpoint["test"]) for name, checkpoint in kept.items()},
        final_s=None if final_s is None else float(final_s),
    )


def _volume_dice(test: list[dict]) -> dict[str, dict[str, float]]:
    """A results.json ``test`` list as test case id → structure → Dice (with :data:`MEAN`)."""
    dice = {}
    for volume in test:
        scores = {name: float(value) for name, value in volume["dice"].items()}
        scores[MEAN] = float(volume["mean_dice"])
        dice[str(volume["case_id"])] = scores
    return dice


def _final_stage(content: dict) -> dict:
    """The final stage's record in results.json (stages are written in training order, the
    final one last); ``{}`` when the file has none."""
    stages = content.get("stages") or {}
    return stages[list(stages)[-1]] if stages else {}


def _checkpoints(content: dict, dice: dict, final: dict) -> dict[str, tuple[int, float]]:
    found = {}
    if "best_step" in final:
        found["chosen"] = (
            int(final["best_step"]),
            float(np.mean([d[MEAN] for d in dice.values()])),
        )
    for name, kept in (content.get("checkpoints") or {}).items():
        mean = float(np.mean([float(volume["mean_dice"]) for volume in kept["test"]]))
        found[name] = (int(kept["step"]), mean)
    return found


def _curve(run_dir: Path, final: dict) -> tuple[tuple[int, float, float | None], ...]:
    """The final stage's validation rows from ``checkpoints/<stage>/metrics.jsonl``."""
    if not final:
        return ()
    rows = read_jsonl(run_dir / "checkpoints" / str(final.get("name", "")) / "metrics.jsonl")
    return tuple(
        (int(row["step"]), float(row["validation_dice"]), row.get("wide_validation_dice"))
        for row in rows
        if row.get("validation_dice") is not None
    )


def _stage_seconds(content: dict, clock_key: str) -> dict[str, float] | None:
    """A results.json's per-stage training seconds under ``clock_key`` (``wall_time_s`` or
    ``cpu_time_s``; ``this_session_total``, the time of the last session alone, left out);
    ``None`` without the record or when a stage lacks its time."""
    record = content.get(clock_key) or {}
    stages = {k: v for k, v in record.items() if k != "this_session_total"}
    if not stages or any(v is None for v in stages.values()):
        return None
    return {k: float(v) for k, v in stages.items()}


def _run_tag(config_path: Path) -> str:
    """The ``tag`` recorded in a run's config.yaml; "" without the file or the key."""
    if not config_path.is_file():
        return ""
    return str((yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}).get("tag") or "")


def unfinished_runs(runs_dir: Path) -> list[str]:
    """Names of run directories with a ``config.yaml`` but no ``results.json``.

    Shared generator directories (``method: generators``, :mod:`tfaug.runs.shared`)
    never have results and are not runs; directories moved aside by ``--force`` are skipped.
    """
    return sorted(
        p.parent.name
        for p in Path(runs_dir).glob("*/config.yaml")
        if not (p.parent / "results.json").is_file()
        and ".replaced-" not in p.parent.name
        and (yaml.safe_load(p.read_text(encoding="utf-8")) or {}).get("method") != "generators"
    )


def ordered_methods(methods: Iterable[str]) -> list[str]:
    """Method labels in the paper's order (none, aff, …, gdgi_mixup), each method's tagged
    labels (``gdgi [b]``) right after it, unknown methods last, alphabetically."""

    def key(label: str) -> tuple[bool, int, str, str]:
        method, _, tag = label.partition(" [")
        known = method in METHOD_ORDER
        return (not known, METHOD_ORDER.index(method) if known else 0, method, tag)

    return sorted(set(methods), key=key)


def structures_of(runs: Sequence[RunResult]) -> list[str]:
    """The structures of the first run's first volume, :data:`MEAN` last."""
    first = next(iter(runs[0].dice.values()))
    return [name for name in first if name != MEAN] + [MEAN]


def dice_values(runs: Sequence[RunResult], method: str, structure: str) -> np.ndarray:
    """(runs × volumes,) float64 Dice of the method label on ``structure`` (every run, volume)."""
    return np.array(
        [d[structure] for r in runs if r.label == method for d in r.dice.values()], np.float64
    )


def keyed_values(
    runs: Sequence[RunResult], method: str, structure: str
) -> dict[tuple[str, int, int], float]:
    """(test volume, draw, seed) → Dice of the method label on ``structure``."""
    return {
        (case, r.draw, r.seed): d[structure]
        for r in runs
        if r.label == method
        for case, d in r.dice.items()
    }


def paired_values(
    runs: Sequence[RunResult], a: str, b: str, structure: str
) -> tuple[np.ndarray, np.ndarray]:
    """Dice of ``a`` and ``b`` on the (test volume, draw, seed) keys both have, sorted by key."""
    return paired_arrays(keyed_values(runs, a, structure), keyed_values(runs, b, structure))


def paired_arrays(
    left: dict[tuple[str, int, int], float], right: dict[tuple[str, int, int], float]
) -> tuple[np.ndarray, np.ndarray]:
    keys = sorted(set(left) & set(right))
    return np.array([left[k] for k in keys]), np.array([right[k] for k in keys])


def wilcoxon_test(runs: Sequence[RunResult], a: str, b: str, structure: str) -> WilcoxonResult:
    """Two-sided Wilcoxon signed-rank test of ``a`` vs ``b`` (``scipy.stats.wilcoxon``)."""
    return signed_rank(*paired_values(runs, a, b, structure), a, b, structure)


def signed_rank(x: np.ndarray, y: np.ndarray, a: str, b: str, structure: str) -> WilcoxonResult:
    """The two-sided Wilcoxon signed-rank test of paired Dice ``x`` (of ``a``) and ``y``
    (of ``b``), both (n,); a result with ``p=None`` and a note when it cannot run."""
    if len(x) == 0:
        return WilcoxonResult(a, b, structure, 0, None, None, None, "no paired volumes")
    difference = float(np.mean(x - y))
    if np.all(x == y):
        note = "all paired differences are zero"
        return WilcoxonResult(a, b, structure, len(x), None, None, difference, note)
    test = stats.wilcoxon(x, y)
    return WilcoxonResult(
        a, b, structure, len(x), float(test.statistic), float(test.pvalue), difference
    )


def run_means(runs: Sequence[RunResult], method: str) -> dict[tuple[str, int, int], float]:
    """("", draw, seed) → the run's mean over test volumes of the mean foreground Dice, for
    the runs of the method label (keys shaped like :func:`keyed_values`' for pairing)."""
    return {
        ("", r.draw, r.seed): float(np.mean([d[MEAN] for d in r.dice.values()]))
        for r in runs
        if r.label == method
    }


def subject_means(runs: Sequence[RunResult], method: str) -> dict[str, float]:
    """Test case id → mean foreground Dice of ``method`` over its runs (paper Fig. 9)."""
    scores: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        if run.label == method:
            for case, dice in run.dice.items():
                scores[case].append(dice[MEAN])
    return {case: float(np.mean(values)) for case, values in scores.items()}


def best_other_method(runs: Sequence[RunResult]) -> str | None:
    """The related method label (none of :data:`LEARNED_AUGMENTATION_METHODS`) with the best
    mean fg Dice."""
    learned = LEARNED_AUGMENTATION_METHODS
    others = ordered_methods({r.label for r in runs if r.method not in learned})
    if not others:
        return None
    return max(others, key=lambda m: float(dice_values(runs, m, MEAN).mean()))


def missing_runs(runs: Sequence[RunResult]) -> list[tuple[str, int, int]]:
    """(method label, draw, seed) absent from the grid labels × draws × seeds in ``runs``."""
    present = {(r.label, r.draw, r.seed) for r in runs}
    grid = itertools.product(
        ordered_methods({r.label for r in runs}),
        sorted({r.draw for r in runs}),
        sorted({r.seed for r in runs}),
    )
    return [key for key in grid if key not in present]

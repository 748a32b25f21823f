"""The records of finished runs: everything a report reads, without the weights.

A run's *record* is its ``config.yaml``, its ``results.json`` and the ``metrics.jsonl`` and
``done.json`` of each of its stages (``checkpoints/<stage>/``, read through the links to
shared generator stages). That is all ``tfaug report`` reads (tables, Wilcoxon tests, the
equal-time comparison, validation curves, diagnostics), in a few hundred kB per run instead
of the weights' megabytes, so records can be committed beside the results they support or
carried to another machine.

Copying records into a grid's runs folder makes the grid skip those runs (a run with
``results.json`` is finished). Such a run has no weights: it can be reported, not exported.
No TensorFlow here.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = "results.json"
CONFIG = "config.yaml"
STAGE_METRICS = "metrics.jsonl"
STAGE_DONE = "done.json"  # a finished stage's iterations and chosen step
PARTIAL = ".partial"  # records being copied; one level deeper than any run directory


@dataclass
class RecordCopy:
    """What :func:`copy_records` did, run directory names in each list.

    Attributes:
        copied: records copied (the destination had no such run).
        present: the destination already held the same finished run (same results.json).
        conflicts: ``(name, reason)`` for runs left as they were: the destination holds an
            unfinished run of that name, or a finished one with other results.
    """

    copied: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    conflicts: list[tuple[str, str]] = field(default_factory=list)


def record_files(run_dir: Path) -> list[Path]:
    """The files of ``run_dir``'s record, relative to it.

    Args:
        run_dir: a finished run directory (or a record of one).
    """
    stages = sorted(
        path.relative_to(run_dir)
        for name in (STAGE_METRICS, STAGE_DONE)
        for path in run_dir.glob(f"checkpoints/*/{name}")
    )
    present = [Path(CONFIG)] if (run_dir / CONFIG).is_file() else []
    return [*present, *stages, Path(RESULTS)]


def finished_runs(runs_dir: Path) -> list[Path]:
    """Run directories of ``runs_dir`` with a ``results.json``, sorted by name."""
    return sorted(p.parent for p in Path(runs_dir).glob(f"*/{RESULTS}"))


def copy_records(source: str | Path, destination: str | Path) -> RecordCopy:
    """Copy the record of every finished run of ``source`` into ``destination``.

    Nothing is ever overwritten: a run the destination already has (finished or not) is
    left as it is and listed in ``present`` or ``conflicts``. Each record is assembled in
    ``<destination>/.partial/`` and renamed into place, so a copy interrupted midway leaves
    no run directory at all, never one with missing files.

    Args:
        source: a runs folder (``tfaug grid``'s ``--runs-dir``) or a folder of records.
        destination: the folder to copy into; created if missing.

    Raises:
        FileNotFoundError: ``source`` is not a folder.
    """
    source, destination = Path(source), Path(destination)
    if not source.is_dir():
        raise FileNotFoundError(
            f"{source}: no such runs folder; pass the folder that holds the run directories "
            "(tfaug grid's --runs-dir) or a folder of records"
        )
    outcome = RecordCopy()
    for run_dir in finished_runs(source):
        target = destination / run_dir.name
        if (target / RESULTS).is_file():
            if (target / RESULTS).read_bytes() == (run_dir / RESULTS).read_bytes():
                outcome.present.append(run_dir.name)
            else:
                outcome.conflicts.append((run_dir.name, f"{target} holds other results"))
            continue
        if target.exists():
            outcome.conflicts.append((run_dir.name, f"{target} holds an unfinished run"))
            continue
        partial = destination / PARTIAL / run_dir.name
        shutil.rmtree(partial, ignore_errors=True)
        for relative in record_files(run_dir):
            (partial / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run_dir / relative, partial / relative)
        partial.rename(target)
        outcome.copied.append(run_dir.name)
    return outcome

"""Stop a process whose tfaug source files changed on disk after it started.

TensorFlow's AutoGraph reads a function's source from disk when it traces it, at the start of
every training stage and of the test evaluation. If tfaug's ``.py`` files change while a run
is in progress (an editable install being edited or checked out, a ``pip install`` of another
version), the process would trace the new source with objects built from the old: a cryptic
error at best, at worst a step that mixes two versions and trains on silently. The package's
files are stamped (modification time and size) when ``tfaug`` is first imported;
:func:`check_source_unchanged` compares them again before each such trace and stops the run
with a message that names the changed files. Starting the command again resumes the run from
its checkpoints with the new code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent


class SourceChangedError(RuntimeError):
    """tfaug's source files changed since this process imported tfaug."""


@dataclass(frozen=True)
class SourceSnapshot:
    """The ``.py`` files below ``root`` with their (modification time in ns, size in bytes)."""

    root: Path
    stamps: dict[str, tuple[int, int]]

    @classmethod
    def take(cls, root: Path = PACKAGE_ROOT) -> SourceSnapshot:
        stamps = {}
        for path in sorted(root.rglob("*.py")):
            stat = path.stat()
            stamps[path.relative_to(root).as_posix()] = (stat.st_mtime_ns, stat.st_size)
        return cls(root, stamps)

    def changed(self) -> list[str]:
        """Files (relative to ``root``) added, removed or modified since the snapshot."""
        now = SourceSnapshot.take(self.root).stamps
        names = self.stamps.keys() | now.keys()
        return sorted(name for name in names if self.stamps.get(name) != now.get(name))


AT_IMPORT = SourceSnapshot.take()
"""The package as it was when this process first imported tfaug."""


def check_source_unchanged(before: str, snapshot: SourceSnapshot | None = None) -> None:
    """Raise :class:`SourceChangedError` if tfaug's files differ from ``snapshot``.

    Args:
        before: what the process is about to do, for the message (e.g. "stage 'segmenter'").
        snapshot: the stamps to compare with (default: :data:`AT_IMPORT`).
    """
    snapshot = snapshot or AT_IMPORT
    changed = snapshot.changed()
    if changed:
        shown = ", ".join(changed[:5]) + (
            f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        )
        raise SourceChangedError(
            f"before {before}: tfaug's source changed on disk since this process started "
            f"({shown} in {snapshot.root}). TensorFlow would trace the new source with objects "
            "built from the old code. Run the same command again: the run resumes from its "
            "checkpoints with the new code (and do not change tfaug's files under a running "
            "run; see docs/grid.md)."
        )

"""What a ``tfaug`` command prints besides its own output: set up once, first thing.

TensorFlow's C++ runtime logs start-up lines on import ("This TensorFlow binary is
optimized to use ...", "oneDNN custom operations are on ...", preceded by absl's "All log
messages before absl::InitializeLog() is called are written to STDERR"). They repeat in
every process, so in every grid run's log. :func:`setup_console` hides TensorFlow's C++
INFO and WARNING lines (``TF_CPP_MIN_LOG_LEVEL=2``; errors still print) unless the user set
a level, and must run before TensorFlow is imported; child processes (the grid's runs)
inherit the setting through the environment. Python warnings are kept; tfaug's own
:class:`~tfaug.data.volume.DatasetWarning` s and
:class:`~tfaug.baselines.teacher_watch.TeacherDriftWarning` s print as one
``tfaug: warning: ...`` line.
Progress bars and result tables are untouched.

tfaug prints a few non-ASCII characters (``±`` in result tables, ``λ`` and ``Δ`` in help
texts). Under an ASCII locale (``LC_ALL=C`` with Python's UTF-8 mode off) Python would stop
with ``UnicodeEncodeError`` at the first one, after a run had finished; :func:`setup_console`
makes standard output and error write such characters as ``\\xb1`` escapes instead.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import MutableMapping
from typing import TextIO

from tfaug.baselines.teacher_watch import TeacherDriftWarning
from tfaug.data.volume import DatasetWarning

TF_LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
QUIET_TF_LOG_LEVEL = "2"
"""0 all, 1 no INFO, 2 no INFO or WARNING, 3 no ERROR either (TensorFlow's C++ levels)."""

_PYTHON_FORMAT = warnings.formatwarning


def quiet_tensorflow(environ: MutableMapping[str, str] | None = None) -> str:
    """Set ``TF_CPP_MIN_LOG_LEVEL=2`` in ``environ`` (default ``os.environ``) unless it is set.

    Returns:
        The level in force afterwards (the user's, if they set one).
    """
    environ = os.environ if environ is None else environ
    if not environ.get(TF_LOG_LEVEL_VARIABLE, "").strip():
        environ[TF_LOG_LEVEL_VARIABLE] = QUIET_TF_LOG_LEVEL
    return environ[TF_LOG_LEVEL_VARIABLE]


def _format_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    """tfaug's own warnings as ``tfaug: warning: <message>``; any other as Python prints it."""
    if issubclass(category, (DatasetWarning, TeacherDriftWarning)):
        return f"tfaug: warning: {message}\n"
    return _PYTHON_FORMAT(message, category, filename, lineno, line)


def tolerate_ascii_streams(streams: tuple[TextIO, ...] | None = None) -> None:
    """Let ``streams`` (default stdout and stderr) escape what their encoding cannot write.

    A stream whose encoding can write ``±`` is left as it is; any other (ASCII) is
    reconfigured with ``errors="backslashreplace"``, so ``±`` prints as ``\\xb1``.
    """
    for stream in (sys.stdout, sys.stderr) if streams is None else streams:
        encoding = getattr(stream, "encoding", None) or "ascii"
        try:
            "±λΔ".encode(encoding)
        except (UnicodeEncodeError, LookupError):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="backslashreplace")


def setup_console() -> None:
    """Quiet TensorFlow's C++ start-up lines, print tfaug's warnings on one line each and
    keep an ASCII terminal from stopping a command at its first ``±``."""
    quiet_tensorflow()
    tolerate_ascii_streams()
    warnings.formatwarning = _format_warning

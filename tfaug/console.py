"""What a ``tfaug`` command prints besides its own output: set up once, first thing.

TensorFlow's C++ runtime logs start-up lines on import ("This TensorFlow binary is
optimized to use ...", "oneDNN custom operations are on ...", preceded by absl's "All log
messages before absl::InitializeLog() is called are written to STDERR"). They repeat in
every process, so in every grid run's log. :func:`setup_console` hides TensorFlow's C++
INFO and WARNING lines (``TF_CPP_MIN_LOG_LEVEL=2``; errors still print) unless the user set
a level, and must run before TensorFlow is imported; child processes (the grid's runs)
inherit the setting through the environment. Python warnings are kept; tfaug's own
:class:`~tfaug.data.volume.DatasetWarning` s print as one ``tfaug: warning: ...`` line.
Progress bars and result tables are untouched.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import MutableMapping

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
    if issubclass(category, DatasetWarning):
        return f"tfaug: warning: {message}\n"
    return _PYTHON_FORMAT(message, category, filename, lineno, line)


def setup_console() -> None:
    """Quiet TensorFlow's C++ start-up lines and print tfaug's warnings on one line each."""
    quiet_tensorflow()
    warnings.formatwarning = _format_warning

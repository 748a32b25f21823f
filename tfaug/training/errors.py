"""Errors of training that the command line reports as messages; no TensorFlow import, so
``tfaug.cli`` can catch them without loading TensorFlow first."""

from __future__ import annotations


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint, if any, is kept."""

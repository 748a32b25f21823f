"""A console warning when a consistency method's teacher drifts: its pseudo-labels give a
class a share of the unlabeled pixels far from that class's share in the labeled slices.

A drifting teacher is how weak-to-strong consistency fails with very few labels: the
student learns the drifted pseudo-labels, which drift further. On the phantom, plain
``unimatch`` labeled about 40 % of the unlabeled pixels LV (the labeled slices: about 5 %)
and ended far below supervised training; ``unimatch`` with ``--config lrdri`` drifted the
same way on ``hard`` for a third of its stage, then recovered, and on another draw of ``wide``
labeled about 70 % Myo and did not. The validation Dice shows
it late and on two volumes; the teacher's class shares (``teacher_class_<c>`` in
``metrics.jsonl`` and TensorBoard) show it at once. :class:`TeacherWatch` compares them with
the labeled slices' shares at every validation and warns when one is off by a factor of
:data:`RATIO` (and by :data:`MARGIN` when it is too high) at two validations in a row, after
the first :data:`GRACE` of the stage (a teacher starts untrained); it says so again when the
share has been back within the tighter :data:`BACK_RATIO` and :data:`BACK_MARGIN` at two
validations in a row (the gap between the two bounds keeps a share that hovers near one of
them from warning at every other validation). Nothing is changed in training. No
TensorFlow here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

RATIO = 3.0  # a share more than 3x, or less than a third of, the labeled slices' share
MARGIN = 0.10  # and, when too high, more than 10 percentage points above it
BACK_RATIO = 2.0  # a drifted share is back within 2x of the labeled share
BACK_MARGIN = 0.05  # or, when above it, within 5 percentage points
GRACE = 0.02  # the first 2 % of the stage (120 of 6000 steps) is not watched
CONSECUTIVE = 2  # validations in a row that must agree before the state changes


class TeacherDriftWarning(UserWarning):
    """A consistency method's pseudo-labels have drifted from the labeled slices' classes."""


def share_is_off(
    share: float, labeled_share: float, ratio: float = RATIO, margin: float = MARGIN
) -> bool:
    """Whether the teacher's ``share`` of a class is far from the labeled slices' share.

    Too high: above ``ratio × labeled_share`` and above ``labeled_share + margin``. Too
    low: below ``labeled_share / ratio``. Shares are fractions of pixels in [0, 1].
    """
    too_high = share > max(ratio * labeled_share, labeled_share + margin)
    return too_high or share < labeled_share / ratio


class TeacherWatch:
    """Warn (:class:`TeacherDriftWarning`) when a teacher's class shares drift, and when
    they come back.

    Args:
        stage: the stage's name, for the messages.
        iterations: the stage's total steps (the first ``GRACE`` of them are not watched).
        labeled_shares: share of each class in the labeled slices' pixels, background
            first (length C).
        class_names: one name per class, background first.
        advice: appended to the drift warning (what the user can do).
    """

    def __init__(
        self,
        stage: str,
        iterations: int,
        labeled_shares: Sequence[float],
        class_names: Sequence[str],
        advice: str = "",
    ) -> None:
        if len(labeled_shares) != len(class_names):
            raise ValueError(
                f"labeled_shares has {len(labeled_shares)} classes, class_names "
                f"{len(class_names)}; give one of each per class, background first"
            )
        self.stage = stage
        self.start = int(GRACE * iterations)
        self.labeled_shares = [float(s) for s in labeled_shares]
        self.class_names = list(class_names)
        self.advice = advice
        self.drifted: set[int] = set()
        self._streaks: dict[int, int] = {}

    def update(self, step: int, shares: Mapping[int, float]) -> list[str]:
        """Take the teacher's shares at a validation; warn and return the messages.

        Args:
            step: the stage's step.
            shares: foreground class index → share of the unlabeled pixels whose
                pseudo-label is that class (the mean since the last validation).
        """
        if step <= self.start:
            return []
        messages = []
        for c, share in sorted(shares.items()):
            labeled = self.labeled_shares[c]
            if c in self.drifted:
                changed = not share_is_off(share, labeled, BACK_RATIO, BACK_MARGIN)
            else:
                changed = share_is_off(share, labeled)
            self._streaks[c] = self._streaks.get(c, 0) + 1 if changed else 0
            if self._streaks[c] < CONSECUTIVE:
                continue
            self._streaks[c] = 0
            self.drifted ^= {c}
            messages.append(self._message(c, step, share, labeled))
        for message in messages:
            warnings.warn(message, TeacherDriftWarning, stacklevel=2)
        return messages

    def _message(self, c: int, step: int, share: float, labeled: float) -> str:
        where = (
            f"stage {self.stage!r}, step {step}: the teacher labels {100 * share:.1f} % of "
            f"the unlabeled pixels {self.class_names[c]}, the labeled slices "
            f"{100 * labeled:.1f} %"
        )
        if c in self.drifted:
            return f"{where}: its pseudo-labels have drifted. {self.advice}".rstrip()
        return f"{where}: back within {BACK_RATIO:g}x of the labeled share."


def tracker_shares(
    trackers: Mapping[str, object], n_classes: int
) -> Callable[[], dict[int, float]]:
    """A reader of the ``teacher_class_<c>`` trackers' current means (Keras metrics).

    Args:
        trackers: tracker name → Keras metric with ``result()``.
        n_classes: C, background included.
    """

    def read() -> dict[int, float]:
        return {c: float(trackers[f"teacher_class_{c}"].result()) for c in range(1, n_classes)}

    return read

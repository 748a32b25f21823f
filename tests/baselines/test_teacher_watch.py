"""The teacher-drift warning: when it fires, when it says the teacher is back, what it says."""

from __future__ import annotations

import warnings

import pytest

from tfaug.baselines.teacher_watch import TeacherDriftWarning, TeacherWatch, share_is_off
from tfaug.console import _format_warning

NAMES = ("background", "RV", "Myo", "LV")
LABELED = (0.85, 0.05, 0.055, 0.045)  # the phantom's labeled slices, about


def _watch(iterations: int = 5000) -> TeacherWatch:
    return TeacherWatch("consistency", iterations, LABELED, NAMES, advice="Try --config lrdri.")


def _feed(watch: TeacherWatch, rows: list[tuple[int, float]]) -> list[tuple[int, str]]:
    """LV's share at each (step, share); RV and Myo at their labeled shares."""
    out = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step, lv in rows:
            out += [(step, m) for m in watch.update(step, {1: 0.05, 2: 0.055, 3: lv})]
    assert [str(w.message) for w in caught] == [m for _, m in out]
    assert all(w.category is TeacherDriftWarning for w in caught)
    return out


@pytest.mark.parametrize(
    ("share", "labeled", "off"),
    [
        (0.40, 0.045, True),  # plain unimatch on the phantom: LV on 40 % of the pixels
        (0.14, 0.045, False),  # 3.1x, but only 9.5 points above
        (0.20, 0.045, True),
        (0.014, 0.045, True),  # below a third
        (0.016, 0.045, False),
        (0.09, 0.0, False),  # a class the labeled slices lack: only > 10 points counts
        (0.11, 0.0, True),
    ],
)
def test_a_share_is_off_by_a_factor_of_three_and_ten_points_when_too_high(share, labeled, off):
    assert share_is_off(share, labeled) == off


def test_it_warns_after_two_drifted_validations_past_the_grace_and_again_when_back():
    rows = [(50, 0.4), (100, 0.4), (150, 0.4), (200, 0.4), (250, 0.3), (300, 0.05), (350, 0.4)]
    rows += [(400, 0.06), (450, 0.12), (500, 0.06), (550, 0.05), (600, 0.04)]
    messages = _feed(_watch(), rows)
    # 50 and 100 are in the first 2 %; 300's single in-bounds validation changes nothing.
    # 450's 12 % is below the drift bound (14.5 %) but not back within 2x (9.5 %).
    assert [step for step, _ in messages] == [200, 550]
    drifted, back = (m for _, m in messages)
    assert drifted == (
        "stage 'consistency', step 200: the teacher labels 40.0 % of the unlabeled pixels LV, "
        "the labeled slices 4.5 %: its pseudo-labels have drifted. Try --config lrdri."
    )
    assert back.endswith(
        "labels 5.0 % of the unlabeled pixels LV, the labeled slices 4.5 %: "
        "back within 2x of the labeled share."
    )


def test_a_share_hovering_at_a_bound_warns_once():
    # Myo on wide: 1.0 % then 1.1 % against a labeled 3.1 % (the drift bound is 1.03 %).
    watch = TeacherWatch("consistency", 1000, (0.9, 0.05, 0.031, 0.019), NAMES)
    hovering = [(s, 0.010 if s % 100 else 0.011) for s in range(200, 1000, 25)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TeacherDriftWarning)
        steps = [s for s, share in hovering if watch.update(s, {1: 0.05, 2: share, 3: 0.019})]
    assert steps == [250]


def test_a_teacher_within_bounds_never_warns_and_a_lost_class_does():
    assert _feed(_watch(), [(s, 0.045 * (1 + 0.5 * (s % 2))) for s in range(100, 2000, 25)]) == []
    lost = _feed(_watch(), [(s, 0.005) for s in range(200, 400, 50)])
    assert [step for step, _ in lost] == [250]
    assert "labels 0.5 % of the unlabeled pixels LV" in lost[0][1]


def test_the_warning_prints_on_one_line_as_tfaug_s_own():
    text = _format_warning(
        TeacherDriftWarning("stage 'c', step 2: drifted."), TeacherDriftWarning, "f.py", 1
    )
    assert text == "tfaug: warning: stage 'c', step 2: drifted.\n"


def test_shares_and_names_must_agree():
    with pytest.raises(ValueError, match="one of each per class"):
        TeacherWatch("consistency", 100, LABELED[:3], NAMES)

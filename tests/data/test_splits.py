"""Tests of tfaug/data/splits.py: seeded partitions, group balance, the paper's ACDC ids, the
ssl4mis lists on the real ACDC layout, and patients with two frames."""

import json
from collections import Counter

import pytest

from data.fixtures import write_acdc_training_set
from tfaug.config import DataConfig, SplitConfig
from tfaug.data.datasets import list_cases
from tfaug.data.splits import PAPER_ACDC_SPLIT, make_split, split_cases
from tfaug.data.volume import DatasetError

ACDC_IDS = [f"patient{i:03d}" for i in range(1, 101)]
# ACDC's training set lists the groups in blocks of 20 (read from Info.cfg in practice).
ACDC_GROUPS = {
    case: ("DCM", "HCM", "MINF", "NOR", "RV")[(int(case[-3:]) - 1) // 20] for case in ACDC_IDS
}


def _config(**values):
    return SplitConfig(**values)


def _sets(split):
    return [split.test, split.validation, split.unlabeled, split.pool]


def test_sets_are_disjoint_with_the_requested_sizes():
    split = make_split(ACDC_IDS, _config(n_labeled=3), ACDC_GROUPS)
    assert [len(s) for s in _sets(split)] == [20, 2, 25, 53]
    assert len(split.labeled) == 3
    everything = [case for s in _sets(split) for case in s]
    assert sorted(everything) == ACDC_IDS
    assert set(split.labeled) <= set(split.pool)


def test_split_is_deterministic_and_independent_of_id_order():
    config = _config(n_labeled=3, draw=2, split_seed=7)
    first = make_split(ACDC_IDS, config, ACDC_GROUPS)
    again = make_split(list(reversed(ACDC_IDS)), config, ACDC_GROUPS)
    assert first == again
    other_seed = make_split(ACDC_IDS, _config(n_labeled=3, draw=2, split_seed=8), ACDC_GROUPS)
    assert other_seed.test != first.test


@pytest.mark.parametrize("groups", [ACDC_GROUPS, None])
def test_partition_does_not_depend_on_draw_or_n_labeled(groups):
    reference = make_split(ACDC_IDS, _config(n_labeled=1, draw=0), groups)
    labeled_sets = set()
    for n_labeled in (1, 3, 5):
        for draw in range(5):
            split = make_split(ACDC_IDS, _config(n_labeled=n_labeled, draw=draw), groups)
            assert _sets(split) == _sets(reference)
            assert len(split.labeled) == n_labeled and split.draw == draw
            labeled_sets.add(tuple(split.labeled))
    assert len(labeled_sets) == 15  # every (N_L, draw) gives a different labeled set


def test_smaller_n_unlabeled_keeps_test_and_validation():
    full = make_split(ACDC_IDS, _config(n_unlabeled=25), ACDC_GROUPS)
    small = make_split(ACDC_IDS, _config(n_unlabeled=5), ACDC_GROUPS)
    assert (small.test, small.validation) == (full.test, full.validation)
    assert set(small.unlabeled) < set(full.unlabeled)


def _group_counts(cases):
    counts = Counter(ACDC_GROUPS[c] for c in cases)
    return [counts.get(g, 0) for g in ("DCM", "HCM", "MINF", "NOR", "RV")]


def test_every_set_is_balanced_across_groups():
    for seed in range(3):
        split = make_split(ACDC_IDS, _config(split_seed=seed), ACDC_GROUPS)
        assert _group_counts(split.test) == [4, 4, 4, 4, 4]
        assert _group_counts(split.unlabeled) == [5, 5, 5, 5, 5]
        for cases in (split.validation, split.pool):
            counts = _group_counts(cases)
            assert max(counts) - min(counts) <= 1, counts


def test_groups_are_used_only_when_balancing():
    """Without balancing, a seed exists whose test set is unbalanced (groups are ignored)."""
    imbalance = [
        max(counts) - min(counts)
        for seed in range(5)
        for counts in [
            _group_counts(
                make_split(
                    ACDC_IDS, _config(split_seed=seed, balance_groups=False), ACDC_GROUPS
                ).test
            )
        ]
    ]
    assert max(imbalance) > 1


def test_labeled_draws_take_distinct_groups():
    single = [make_split(ACDC_IDS, _config(draw=d), ACDC_GROUPS).labeled[0] for d in range(5)]
    assert sorted(ACDC_GROUPS[c] for c in single) == ["DCM", "HCM", "MINF", "NOR", "RV"]
    for draw in range(5):
        triple = make_split(ACDC_IDS, _config(n_labeled=3, draw=draw), ACDC_GROUPS).labeled
        assert len({ACDC_GROUPS[c] for c in triple}) == 3


def test_unequal_groups_are_stratified_in_proportion():
    ids = [f"case{i:02d}" for i in range(30)]
    groups = {c: ("A" if i < 20 else "B") for i, c in enumerate(ids)}
    for seed in range(3):
        config = _config(n_test=8, n_validation=2, n_unlabeled=10, split_seed=seed)
        split = make_split(ids, config, groups)
        for cases in _sets(split):
            share_b = sum(groups[c] == "B" for c in cases)
            assert abs(share_b - len(cases) / 3) <= 1, (seed, cases)


def test_to_dict_is_json_serialisable():
    split = make_split(ACDC_IDS, _config(), ACDC_GROUPS)
    restored = json.loads(json.dumps(split.to_dict()))
    assert restored["test"] == split.test and restored["draw"] == 0


def _ids(*numbers):
    return [f"patient{n:03d}" for n in numbers]


PAPER_TEST = _ids(7, 8, 9, 10, 27, 28, 29, 30, 47, 48, 49, 50, 67, 68, 69, 70, 87, 88, 89, 90)
PAPER_UNLABELED = _ids(16, 17, 18, 19, 20, 36, 37, 38, 39, 40, 56, 57, 58, 59, 60)
PAPER_UNLABELED += _ids(76, 77, 78, 79, 80, 96, 97, 98, 99, 100)


@pytest.mark.parametrize(
    ("n_labeled", "draw", "expected"),
    [
        (1, 0, _ids(2)),
        (1, 1, _ids(42)),
        (1, 2, _ids(22)),
        (1, 3, _ids(62)),
        (1, 4, _ids(95)),
        (3, 0, _ids(2, 22, 42)),
        (3, 1, _ids(42, 62, 82)),
        (3, 2, _ids(22, 42, 82)),
        (3, 3, _ids(2, 42, 82)),
        (3, 4, _ids(2, 42, 95)),
    ],
)
def test_paper_split_ids(n_labeled, draw, expected):
    split = make_split(ACDC_IDS, _config(scheme="paper", n_labeled=n_labeled, draw=draw))
    assert split.labeled == expected
    assert split.test == PAPER_TEST
    assert split.validation == _ids(11, 71)
    assert split.unlabeled == PAPER_UNLABELED
    assert split.pool == sorted(set(ACDC_IDS) - set(PAPER_TEST + _ids(11, 71) + PAPER_UNLABELED))
    assert len(split.pool) == 53 and set(split.labeled) <= set(split.pool)


def test_paper_constant_matches_the_paper_lists():
    assert list(PAPER_ACDC_SPLIT.test) == PAPER_TEST
    assert list(PAPER_ACDC_SPLIT.unlabeled) == PAPER_UNLABELED
    assert sorted(PAPER_ACDC_SPLIT.draws) == [1, 3]


def test_paper_split_smaller_n_unlabeled_takes_the_first_ids():
    split = make_split(ACDC_IDS, _config(scheme="paper", n_unlabeled=10))
    assert split.unlabeled == PAPER_UNLABELED[:10]
    full = make_split(ACDC_IDS, _config(scheme="paper"))
    assert split.pool == full.pool


@pytest.mark.parametrize("n_labeled", [1, 3])
def test_extra_validation_volumes_come_from_outside_every_draw_and_change_nothing_else(n_labeled):
    plain = [
        make_split(ACDC_IDS, _config(n_labeled=n_labeled, draw=d), ACDC_GROUPS) for d in range(5)
    ]
    wide = [
        make_split(
            ACDC_IDS, _config(n_labeled=n_labeled, draw=d, n_extra_validation=6), ACDC_GROUPS
        )
        for d in range(5)
    ]
    extra = set(wide[0].extra_validation)
    assert len(extra) == 6
    assert all(set(split.extra_validation) == extra for split in wide)  # shared by the draws
    for before, after in zip(plain, wide, strict=True):
        assert before.extra_validation == []
        assert (after.labeled, after.test, after.validation, after.unlabeled) == (
            before.labeled,
            before.test,
            before.validation,
            before.unlabeled,
        )
        assert not extra & set(before.labeled)  # never labeled in any draw
        assert after.pool == sorted(set(before.pool) - extra)
    assert json.loads(json.dumps(wide[0].to_dict()))["extra_validation"] == sorted(extra)


def test_extra_validation_needs_undrawn_pool_volumes_and_the_random_scheme():
    ids = [f"case{i:02d}" for i in range(30)]
    config = _config(n_labeled=1, n_unlabeled=5, n_test=20, n_validation=2, n_extra_validation=2)
    with pytest.raises(DatasetError, match="only 0 pool volumes are outside every labeled draw"):
        make_split(ids, config)
    with pytest.raises(DatasetError, match="n_extra_validation is for scheme 'random'"):
        make_split(ACDC_IDS, _config(scheme="paper", n_extra_validation=2), ACDC_GROUPS)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"scheme": "paper", "n_labeled": 5}, "--nl 5"),
        ({"scheme": "paper", "draw": 5}, "draw index 5"),
        ({"scheme": "paper", "n_unlabeled": 30}, "--n-unlabeled 30"),
        ({"scheme": "paper", "n_test": 10}, "n_test"),
        ({"draw": 5}, "draw index 5 .* 0..4"),
        ({"scheme": "kfold"}, "kfold"),
        ({"n_labeled": 0}, "--nl"),
    ],
)
def test_bad_configurations_raise(values, message):
    with pytest.raises(DatasetError, match=message):
        make_split(ACDC_IDS, _config(**values), ACDC_GROUPS)


def test_pool_smaller_than_n_labeled_raises():
    ids = [f"case{i:02d}" for i in range(30)]
    config = _config(n_labeled=5, n_unlabeled=5, n_test=20, n_validation=2)
    with pytest.raises(
        DatasetError, match="labeled pool has 3 volumes but --nl 5 was asked; lower --nl"
    ):
        make_split(ids, config)


def test_too_few_cases_raises():
    ids = [f"case{i:02d}" for i in range(40)]
    with pytest.raises(DatasetError, match="40 cases cannot hold 20 test"):
        make_split(ids, _config())


def test_paper_ids_missing_from_the_dataset_raise():
    with pytest.raises(DatasetError, match="patient100"):
        make_split(ACDC_IDS[:-1], _config(scheme="paper"))


def test_missing_groups_and_duplicate_ids_raise():
    groups = dict(ACDC_GROUPS)
    del groups["patient013"]
    with pytest.raises(DatasetError, match="patient013"):
        make_split(ACDC_IDS, _config(), groups)
    with pytest.raises(DatasetError, match="patient001"):
        make_split(ACDC_IDS + ["patient001"], _config(), ACDC_GROUPS)


# --- scheme ssl4mis on the real ACDC layout ------------------------------------------------

# The published lists, written out here independently of tfaug/data/ssl4mis.py (sorted; the
# labeled patients are the first 1 / 3 / 7 of SSL4MIS's train_slices.list, which UniMatch's
# splits/acdc/{1,3,7}/labeled.txt hold).
SSL4MIS_VALIDATION = _ids(2, 19, 28, 30, 39, 45, 78, 82, 85, 87)
SSL4MIS_TEST = _ids(1, 7, 8, 11, 13, 22, 24, 33, 52, 59, 64, 65, 66, 68, 75, 80, 81, 83, 84, 93)
SSL4MIS_LABELED = {1: _ids(99), 3: _ids(38, 50, 99), 7: _ids(21, 38, 49, 50, 58, 99, 100)}
SSL4MIS_SIZES = {"n_test": 20, "n_validation": 10, "n_unlabeled": 70}


@pytest.fixture(scope="module")
def acdc_100(tmp_path_factory):
    """ACDC's 100 training patients in the real layout, 2x2x1 voxels per frame (listing only)."""
    return write_acdc_training_set(tmp_path_factory.mktemp("acdc100"))


def _patients_of(cases):
    return sorted({case.split("_")[0] for case in cases})


@pytest.mark.parametrize("n_labeled", [1, 3, 7])
def test_ssl4mis_split_of_both_frames_on_the_acdc_layout(acdc_100, n_labeled):
    refs = list_cases(DataConfig(dataset="acdc", frames="both"), acdc_100)
    assert len(refs) == 200
    split = split_cases(refs, _config(scheme="ssl4mis", n_labeled=n_labeled, **SSL4MIS_SIZES))
    sets = [split.labeled, split.unlabeled, split.validation, split.test]
    assert [len(_patients_of(s)) for s in sets] == [n_labeled, 70 - n_labeled, 10, 20]
    assert _patients_of(split.labeled) == SSL4MIS_LABELED[n_labeled]
    assert _patients_of(split.validation) == SSL4MIS_VALIDATION
    assert _patients_of(split.test) == SSL4MIS_TEST
    for cases in sets:  # both frames of every patient, in this set only
        assert cases == sorted(
            f"{p}_{phase}" for p in _patients_of(cases) for phase in ("ED", "ES")
        )
    everything = [case for cases in sets for case in cases]
    assert sorted(everything) == sorted(ref.case_id for ref in refs)  # disjoint, complete
    assert split.pool == split.labeled


def test_ssl4mis_split_of_es_frames_names_the_same_patients(acdc_100):
    refs = list_cases(DataConfig(dataset="acdc"), acdc_100)
    split = split_cases(refs, _config(scheme="ssl4mis", n_labeled=3, **SSL4MIS_SIZES))
    assert split.labeled == SSL4MIS_LABELED[3]
    assert (split.validation, split.test) == (SSL4MIS_VALIDATION, SSL4MIS_TEST)
    assert len(split.unlabeled) == 67


def test_ssl4mis_split_names_a_missing_patient_and_the_fix(acdc_100):
    refs = list_cases(DataConfig(dataset="acdc", frames="both"), acdc_100)
    refs = [ref for ref in refs if ref.meta["patient"] != "patient052"]
    with pytest.raises(
        DatasetError, match=r"1 are missing from the dataset: patient052; point"
    ) as error:
        split_cases(refs, _config(scheme="ssl4mis", **SSL4MIS_SIZES))
    assert "--data-root" in str(error.value) and "patient001..patient100" in str(error.value)


def test_ssl4mis_split_leaves_unlisted_patients_out_and_caps_the_unlabeled():
    ids = ACDC_IDS + _ids(101, 150)  # e.g. the 2023 release's testing patients
    split = make_split(ids, _config(scheme="ssl4mis", n_labeled=3, **SSL4MIS_SIZES))
    assert not {"patient101", "patient150"} & {c for s in _sets(split) + [split.labeled] for c in s}
    small = make_split(
        ids, _config(scheme="ssl4mis", n_labeled=3, **{**SSL4MIS_SIZES, "n_unlabeled": 2})
    )
    assert small.unlabeled == _ids(58, 100)  # the next two of the published order
    assert small.pool == sorted(
        set(ACDC_IDS) - set(SSL4MIS_VALIDATION + SSL4MIS_TEST + small.unlabeled)
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"n_labeled": 71}, "--nl 71; the papers report --nl 1, 3, 7"),
        ({"n_validation": 2}, "scheme 'ssl4mis' fixes .*'n_validation': 10"),
        ({"draw": 1}, "draw index 1 .*one fixed labeled set"),
    ],
)
def test_ssl4mis_bad_configurations_raise(values, message):
    with pytest.raises(DatasetError, match=message):
        make_split(ACDC_IDS, _config(scheme="ssl4mis", **{**SSL4MIS_SIZES, **values}))


def test_random_split_keeps_the_frames_of_a_patient_together():
    cases = [f"{p}_{phase}" for p in ACDC_IDS for phase in ("ED", "ES")]
    patients = {case: case.split("_")[0] for case in cases}
    groups = {case: ACDC_GROUPS[patients[case]] for case in cases}
    split = make_split(cases, _config(n_labeled=3, draw=1), groups, patients)
    by_patient = make_split(ACDC_IDS, _config(n_labeled=3, draw=1), ACDC_GROUPS)
    for frames, ids in zip(
        _sets(split) + [split.labeled], _sets(by_patient) + [by_patient.labeled], strict=True
    ):
        assert frames == sorted(f"{p}_{phase}" for p in ids for phase in ("ED", "ES"))


def test_frames_of_one_patient_in_two_groups_raise():
    cases = ["patient001_ED", "patient001_ES"] + ACDC_IDS[1:]
    patients = {"patient001_ED": "patient001", "patient001_ES": "patient001"}
    groups = {**ACDC_GROUPS, "patient001_ED": "DCM", "patient001_ES": "NOR"}
    with pytest.raises(
        DatasetError, match="patient patient001 has cases in groups 'DCM' and 'NOR'"
    ):
        make_split(cases, _config(), groups, patients)

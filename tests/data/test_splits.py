"""Tests of tfaug/data/splits.py: seeded partitions, group balance, the paper's ACDC ids."""

import json
from collections import Counter

import pytest

from tfaug.config import SplitConfig
from tfaug.data.splits import PAPER_ACDC_SPLIT, make_split
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

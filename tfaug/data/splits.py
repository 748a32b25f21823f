"""Division of a dataset's cases into test / validation / unlabeled / labeled sets
(docs/method.md §7).

Two schemes (``SplitConfig.scheme``):

* ``random``: a seeded partition of the sorted case ids into test, validation, unlabeled and
  the labeled *pool*, then ``draws`` seeded labeled draws of ``n_labeled`` volumes from the
  pool; ``draw`` selects one. The partition depends only on the set of ids, ``split_seed``
  and the set sizes (never on ``draw`` or ``n_labeled``), so runs with different draws share
  their test, validation and unlabeled sets. With ``balance_groups`` and groups (ACDC's
  ``Group`` from Info.cfg), every set is stratified: it holds each group in proportion to the
  group's size, within one case (equal groups, as in ACDC: counts per group differ by at most
  one), and each labeled draw takes its volumes from distinct groups where possible.
* ``paper``: the original ACDC ids of the paper (:data:`PAPER_ACDC_SPLIT`), for N_L 1 or 3,
  with its five fixed draws (``draws`` is ignored). A smaller ``n_unlabeled`` takes the first
  ids of the paper's unlabeled list (the N_UL ablation); the pool is every other case outside
  the paper's test, validation and full unlabeled lists, so it does not change with N_UL.
* ``ssl4mis``: the ACDC patient lists shared by SSL4MIS, BCP and UniMatch
  (:mod:`tfaug.data.ssl4mis`): 20 test and 10 validation patients, the first N_L of the 70
  training patients labeled (one fixed draw: ``draw`` must be 0), the training patients after
  them unlabeled (at most ``n_unlabeled``, in list order); the pool is the training patients
  that are not unlabeled. Patients of the dataset outside the lists are in no set.

Patients: a case may be one frame of a patient (ACDC with ``data.frames: both``, cases
``patientXXX_ED`` and ``patientXXX_ES``). Every scheme then divides *patients* (the sizes and
``--nl`` count patients) and each set holds all the cases of its patients, so no patient has
a frame in two sets. With one case per patient (``patients`` not given) patients are cases
and the sets are exactly as before.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from tfaug.config import SplitConfig
from tfaug.data import ssl4mis
from tfaug.data.volume import CaseRef, DatasetError


@dataclass
class Split:
    """One run's sets of case ids (each sorted).

    Attributes:
        labeled: the N_L labeled volumes of this draw (a subset of ``pool``).
        unlabeled: the N_UL unlabeled volumes (their labels are never used).
        validation: volumes for model selection.
        test: volumes for the reported scores.
        pool: the labeled pool the draws come from (disjoint from the three sets above).
        draw: index of the labeled draw.
        extra_validation: volumes that only widen the validation set for the second,
            measuring checkpoint (``split.n_extra_validation``); never labeled in any draw
            and not in ``pool``.
    """

    labeled: list[str]
    unlabeled: list[str]
    validation: list[str]
    test: list[str]
    pool: list[str]
    draw: int
    extra_validation: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[str] | int]:
        """Plain dict (JSON/YAML-serialisable)."""
        return asdict(self)


@dataclass(frozen=True)
class PaperSplit:
    """The ACDC split of the paper's original code (docs/method.md §7).

    Attributes:
        test: 20 test ids.
        validation: 2 validation ids.
        unlabeled: 25 unlabeled ids, in the order a smaller N_UL takes them.
        draws: N_L → the five labeled draws.
    """

    test: tuple[str, ...]
    validation: tuple[str, ...]
    unlabeled: tuple[str, ...]
    draws: Mapping[int, tuple[tuple[str, ...], ...]]


def _patients(*ranges: tuple[int, int]) -> tuple[str, ...]:
    """``(7, 10), (27, 30)`` → ``("patient007", ..., "patient010", "patient027", ...)``."""
    return tuple(f"patient{i:03d}" for low, high in ranges for i in range(low, high + 1))


PAPER_ACDC_SPLIT = PaperSplit(
    test=_patients((7, 10), (27, 30), (47, 50), (67, 70), (87, 90)),
    validation=_patients((11, 11), (71, 71)),
    unlabeled=_patients((16, 20), (36, 40), (56, 60), (76, 80), (96, 100)),
    draws={
        1: tuple(_patients((i, i)) for i in (2, 42, 22, 62, 95)),
        3: tuple(
            _patients(*((i, i) for i in ids))
            for ids in ((2, 22, 42), (42, 62, 82), (22, 42, 82), (2, 42, 82), (2, 42, 95))
        ),
    },
)


def make_split(
    case_ids: list[str],
    cfg: SplitConfig,
    groups: Mapping[str, str | None] | None = None,
    patients: Mapping[str, str] | None = None,
) -> Split:
    """Divide ``case_ids`` into the sets of one run.

    Args:
        case_ids: every case of the dataset (order irrelevant, ids unique).
        cfg: scheme, set sizes, number of draws, draw index and seed.
        groups: case id → group name (ACDC pathology); used by ``scheme: random`` when
            ``cfg.balance_groups`` is true, ignored otherwise.
        patients: case id → patient id, for datasets with several cases per patient (ACDC's
            ED and ES frames); ``None`` or a missing id: the case is its own patient.

    Returns:
        The :class:`Split` of draw ``cfg.draw``, each set holding every case of its
        patients. Nothing is read from disk.

    Raises:
        DatasetError: duplicate ids, unknown scheme, bad sizes or draw index, too few
            patients for the requested sizes, a pool smaller than ``n_labeled``, ids missing
            from ``groups``, two groups for one patient, or (``paper``, ``ssl4mis``) listed
            patients missing from the dataset.
    """
    duplicates = sorted(c for c, n in Counter(case_ids).items() if n > 1)
    if duplicates:
        raise DatasetError(f"split: case ids must be unique, found duplicates {duplicates}")
    _check_sizes(cfg)
    patient_of = {case: (patients or {}).get(case, case) for case in case_ids}
    units = sorted(set(patient_of.values()))
    return _expand(_split_patients(units, cfg, _patient_groups(patient_of, groups)), patient_of)


def split_cases(refs: list[CaseRef], cfg: SplitConfig) -> Split:
    """:func:`make_split` of a dataset listing: groups and patients from each ``ref.meta``.

    ``meta["group"]`` (ACDC's Info.cfg Group; ``None`` elsewhere) gives the groups and
    ``meta["patient"]`` (ACDC with ``data.frames: both``) the patient of a case.
    """
    return make_split(
        [ref.case_id for ref in refs],
        cfg,
        groups={ref.case_id: ref.meta.get("group") for ref in refs},
        patients={ref.case_id: ref.meta.get("patient", ref.case_id) for ref in refs},
    )


def _split_patients(
    units: list[str], cfg: SplitConfig, groups: dict[str, str | None] | None
) -> Split:
    """The split of the patient ids ``units`` by ``cfg.scheme``."""
    if cfg.scheme == "paper":
        return _paper_split(units, cfg)
    if cfg.scheme == "ssl4mis":
        return _ssl4mis_split(units, cfg)
    if cfg.scheme == "random":
        use_groups = groups if cfg.balance_groups else None
        return _random_split(units, cfg, use_groups)
    raise DatasetError(
        f"split: unknown split.scheme {cfg.scheme!r}; use 'random', 'paper' (the paper's ACDC "
        "ids) or 'ssl4mis' (the semi-supervised literature's ACDC lists)"
    )


def _patient_groups(
    patient_of: dict[str, str], groups: Mapping[str, str | None] | None
) -> dict[str, str | None] | None:
    """Patient → group from case → group; the cases of one patient must agree."""
    if groups is None:
        return None
    found: dict[str, str | None] = {}
    for case, patient in sorted(patient_of.items()):
        if case not in groups:
            continue
        if patient in found and found[patient] != groups[case]:
            raise DatasetError(
                f"split: patient {patient} has cases in groups {found[patient]!r} and "
                f"{groups[case]!r} (case {case}); its frames must share one Info.cfg Group"
            )
        found[patient] = groups[case]
    return found


def _expand(split: Split, patient_of: dict[str, str]) -> Split:
    """The patient split ``split`` with every patient replaced by its cases (sorted)."""
    cases: dict[str, list[str]] = {}
    for case, patient in patient_of.items():
        cases.setdefault(patient, []).append(case)

    def expand(units: list[str]) -> list[str]:
        return sorted(case for unit in units for case in cases[unit])

    return Split(
        labeled=expand(split.labeled),
        unlabeled=expand(split.unlabeled),
        validation=expand(split.validation),
        test=expand(split.test),
        pool=expand(split.pool),
        draw=split.draw,
        extra_validation=expand(split.extra_validation),
    )


def _check_sizes(cfg: SplitConfig) -> None:
    sizes = {
        "n_test": cfg.n_test,
        "n_validation": cfg.n_validation,
        "n_unlabeled": cfg.n_unlabeled,
        "n_extra_validation": cfg.n_extra_validation,
    }
    negative = {k: v for k, v in sizes.items() if v < 0}
    if negative:
        raise DatasetError(f"split: set sizes must be >= 0, found {negative}")
    if cfg.n_labeled < 1:
        raise DatasetError(f"split: --nl must be >= 1, found {cfg.n_labeled}")
    if cfg.draws < 1:
        raise DatasetError(f"split: split.draws must be >= 1, found {cfg.draws}")
    if cfg.n_extra_validation and cfg.scheme != "random":
        raise DatasetError(
            f"split: split.n_extra_validation is for scheme 'random', found scheme "
            f"{cfg.scheme!r} with n_extra_validation {cfg.n_extra_validation}; set it to 0"
        )


def _check_draw(draw: int, n_draws: int, what: str) -> None:
    if not 0 <= draw < n_draws:
        raise DatasetError(
            f"split: draw index {draw} is out of range for {what} with {n_draws} draws; "
            f"use --split 0..{n_draws - 1}"
        )


def _random_split(
    case_ids: list[str], cfg: SplitConfig, groups: Mapping[str, str | None] | None
) -> Split:
    _check_draw(cfg.draw, cfg.draws, "scheme 'random'")
    held_out = cfg.n_test + cfg.n_validation + cfg.n_unlabeled
    if held_out >= len(case_ids):
        raise DatasetError(
            f"split: {len(case_ids)} cases cannot hold {cfg.n_test} test + {cfg.n_validation} "
            f"validation + {cfg.n_unlabeled} unlabeled volumes and a labeled pool; lower "
            "--n-unlabeled, split.n_test or split.n_validation, or add cases"
        )
    pool_size = len(case_ids) - held_out
    if pool_size < cfg.n_labeled:
        raise DatasetError(
            f"split: the labeled pool has {pool_size} volumes but --nl {cfg.n_labeled} was "
            "asked; lower --nl or --n-unlabeled"
        )
    group_of = _group_map(case_ids, groups)
    rng = np.random.default_rng([cfg.split_seed, 0])
    order = _stratified_order(_shuffled_groups(case_ids, group_of, rng))
    test, rest = order[: cfg.n_test], order[cfg.n_test :]
    validation, rest = rest[: cfg.n_validation], rest[cfg.n_validation :]
    unlabeled, pool = rest[: cfg.n_unlabeled], rest[cfg.n_unlabeled :]
    draw_rng = np.random.default_rng([cfg.split_seed, 1, cfg.n_labeled])
    draws = _labeled_draws(pool, group_of, cfg.n_labeled, cfg.draws, draw_rng)
    # After the draws, from the volumes none of them labels: the other sets and the draws
    # stay exactly those of a split without extra validation volumes.
    drawn = {case for draw in draws for case in draw}
    undrawn = [case for case in pool if case not in drawn]
    if len(undrawn) < cfg.n_extra_validation:
        raise DatasetError(
            f"split: split.n_extra_validation is {cfg.n_extra_validation}, but only "
            f"{len(undrawn)} pool volumes are outside every labeled draw; lower it, "
            "--n-unlabeled or split.draws"
        )
    extra = undrawn[: cfg.n_extra_validation]
    return Split(
        labeled=sorted(draws[cfg.draw]),
        unlabeled=sorted(unlabeled),
        validation=sorted(validation),
        test=sorted(test),
        pool=sorted(set(pool) - set(extra)),
        draw=cfg.draw,
        extra_validation=sorted(extra),
    )


def _group_map(case_ids: list[str], groups: Mapping[str, str | None] | None) -> dict[str, str]:
    """Case id → group; a single group when ``groups`` is None."""
    if groups is None:
        return dict.fromkeys(case_ids, "")
    missing = sorted(c for c in case_ids if c not in groups)
    if missing:
        raise DatasetError(
            f"split: no group for {len(missing)} case(s) {missing[:10]}; every case needs its "
            "Info.cfg Group, or set split.balance_groups=false"
        )
    return {c: str(groups[c]) for c in case_ids}


def _shuffled_groups(
    case_ids: list[str], group_of: dict[str, str], rng: np.random.Generator
) -> list[list[str]]:
    """Members of each group in a seeded random order; the groups in a seeded random order."""
    names = sorted(set(group_of.values()))
    members = [sorted(c for c in case_ids if group_of[c] == name) for name in names]
    shuffled = [[group[i] for i in rng.permutation(len(group))] for group in members]
    return [shuffled[i] for i in rng.permutation(len(shuffled))]


def _stratified_order(groups: list[list[str]]) -> list[str]:
    """Interleave the groups so that any run of consecutive cases holds each group in
    proportion to its size, within one case.

    The ``r``-th member of a group of ``n`` sits at position ``(r + 0.5) / n``; ties (equal
    group sizes) follow the group order, which makes equal groups a plain round-robin.
    """
    keyed = [
        ((rank + 0.5) / len(members), index, case)
        for index, members in enumerate(groups)
        for rank, case in enumerate(members)
    ]
    return [case for _, _, case in sorted(keyed)]


def _labeled_draws(
    pool: list[str],
    group_of: dict[str, str],
    n_labeled: int,
    n_draws: int,
    rng: np.random.Generator,
) -> list[list[str]]:
    """``n_draws`` draws of ``n_labeled`` distinct pool volumes.

    Groups are visited in a seeded rotation that continues across draws, so a draw spans
    distinct groups where possible and successive draws move on to the next groups; within a
    group, the volumes used least often by earlier draws are preferred.
    """
    names = sorted({group_of[c] for c in pool})
    rotation = [names[i] for i in rng.permutation(len(names))]
    members = {name: sorted(c for c in pool if group_of[c] == name) for name in names}
    used = dict.fromkeys(pool, 0)
    cursor = 0
    draws = []
    for _ in range(n_draws):
        chosen: list[str] = []
        while len(chosen) < n_labeled:
            name = rotation[cursor % len(rotation)]
            cursor += 1
            candidates = [c for c in members[name] if c not in chosen]
            if not candidates:
                continue
            fewest = min(used[c] for c in candidates)
            least_used = [c for c in candidates if used[c] == fewest]
            chosen.append(least_used[int(rng.integers(len(least_used)))])
        for case in chosen:
            used[case] += 1
        draws.append(chosen)
    return draws


def _check_fixed_sizes(scheme: str, n_test: int, n_validation: int, cfg: SplitConfig) -> None:
    """Raise unless ``cfg`` asks for the test and validation sizes a fixed scheme has."""
    fixed = {"n_test": n_test, "n_validation": n_validation}
    asked = {"n_test": cfg.n_test, "n_validation": cfg.n_validation}
    if asked != fixed:
        raise DatasetError(
            f"split: scheme '{scheme}' fixes {fixed}, found {asked}; set these values or use "
            "split.scheme=random"
        )


def _paper_split(case_ids: list[str], cfg: SplitConfig) -> Split:
    paper = PAPER_ACDC_SPLIT
    if cfg.n_labeled not in paper.draws:
        raise DatasetError(
            f"split: scheme 'paper' has labeled draws for --nl {sorted(paper.draws)} only, "
            f"found --nl {cfg.n_labeled}; use split.scheme=random for other N_L"
        )
    _check_fixed_sizes("paper", len(paper.test), len(paper.validation), cfg)
    if cfg.n_unlabeled > len(paper.unlabeled):
        raise DatasetError(
            f"split: scheme 'paper' has {len(paper.unlabeled)} unlabeled volumes, found "
            f"--n-unlabeled {cfg.n_unlabeled}; lower it or use split.scheme=random"
        )
    draws = paper.draws[cfg.n_labeled]
    _check_draw(cfg.draw, len(draws), f"scheme 'paper' (--nl {cfg.n_labeled})")
    held_out = set(paper.test) | set(paper.validation) | set(paper.unlabeled)
    missing = sorted((held_out | {c for draw in draws for c in draw}) - set(case_ids))
    if missing:
        raise DatasetError(
            f"split: scheme 'paper' needs the original ACDC ids, but {len(missing)} are missing "
            f"from the dataset: {missing[:10]}; check data.root (ACDC training/ with "
            "patient001..patient100) or use split.scheme=random"
        )
    return Split(
        labeled=sorted(draws[cfg.draw]),
        unlabeled=sorted(paper.unlabeled[: cfg.n_unlabeled]),
        validation=sorted(paper.validation),
        test=sorted(paper.test),
        pool=sorted(set(case_ids) - held_out),
        draw=cfg.draw,
    )


def _ssl4mis_split(case_ids: list[str], cfg: SplitConfig) -> Split:
    """The lists of :mod:`tfaug.data.ssl4mis` (``case_ids`` are patient ids)."""
    training = ssl4mis.TRAINING
    if not 1 <= cfg.n_labeled <= len(training):
        raise DatasetError(
            f"split: scheme 'ssl4mis' labels the first N_L of its {len(training)} training "
            f"patients, found --nl {cfg.n_labeled}; the papers report --nl "
            f"{', '.join(map(str, ssl4mis.PUBLISHED_N_LABELED))}"
        )
    _check_fixed_sizes("ssl4mis", len(ssl4mis.TEST), len(ssl4mis.VALIDATION), cfg)
    _check_draw(cfg.draw, 1, "scheme 'ssl4mis' (one fixed labeled set per --nl)")
    listed = training + ssl4mis.VALIDATION + ssl4mis.TEST
    missing = sorted(set(listed) - set(case_ids))
    if missing:
        raise DatasetError(
            f"split: scheme 'ssl4mis' needs the 100 ACDC training patients of its lists, but "
            f"{len(missing)} are missing from the dataset: {', '.join(missing[:10])}"
            f"{' ...' if len(missing) > 10 else ''}; point data.root (--data-root) at the "
            "ACDC folder holding training/ with patient001..patient100 (every one with its "
            "Info.cfg, frames and _gt files; 'tfaug data inspect' lists what is wrong), or "
            "use split.scheme=random"
        )
    labeled = list(training[: cfg.n_labeled])
    unlabeled = list(training[cfg.n_labeled :][: cfg.n_unlabeled])
    return Split(
        labeled=sorted(labeled),
        unlabeled=sorted(unlabeled),
        validation=sorted(ssl4mis.VALIDATION),
        test=sorted(ssl4mis.TEST),
        pool=sorted(set(training) - set(unlabeled)),
        draw=cfg.draw,
    )

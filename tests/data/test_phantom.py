"""The synthetic cardiac phantom: ACDC layout, contents, determinism, atomicity, variation."""

import json
import re
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from tfaug.config import DataConfig
from tfaug.data import phantom
from tfaug.data.acdc import load_acdc
from tfaug.data.datasets import list_cases
from tfaug.data.phantom import GROUPS, PHANTOM_VARIANTS, draw_subject, generate_phantom
from tfaug.data.volume import DatasetError
from tfaug.methods import PHANTOM_VARIANT_NAMES

SUBJECTS = 10
INFO_KEYS = {"ED", "ES", "Group", "Height", "NbFrame", "Weight"}


def read_info(case: Path) -> dict[str, str]:
    lines = (case / "Info.cfg").read_text(encoding="utf-8").splitlines()
    pairs = [line.split(": ", 1) for line in lines if line.strip()]
    return {key: value for key, value in pairs}


def frames(case: Path) -> dict[str, tuple[Path, Path]]:
    """ED and ES (image, label) paths, named as ACDC names them."""
    info = read_info(case)
    return {
        phase: (
            case / f"{case.name}_frame{int(info[phase]):02d}.nii.gz",
            case / f"{case.name}_frame{int(info[phase]):02d}_gt.nii.gz",
        )
        for phase in ("ED", "ES")
    }


def load(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    image = nib.load(path)
    return np.asarray(image.dataobj), image


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The SUBJECTS-subject phantom (seed 0) of a variant, generated once per module."""
    made: dict[str, Path] = {}

    def get(variant: str) -> Path:
        if variant not in made:
            out_dir = tmp_path_factory.mktemp(f"phantom-{variant}") / "acdc"
            made[variant] = generate_phantom(out_dir, subjects=SUBJECTS, variant=variant)
        return made[variant]

    return get


def cases_of(root: Path) -> list[Path]:
    return sorted((root / "training").iterdir())


@pytest.fixture(scope="module")
def dataset(generated: Callable[[str], Path]) -> Path:
    return generated("default")


@pytest.fixture(scope="module")
def cases(dataset: Path) -> list[Path]:
    return cases_of(dataset)


def test_layout_matches_acdc(dataset: Path, cases: list[Path]) -> None:
    assert [case.name for case in cases] == [f"patient{i:03d}" for i in range(1, SUBJECTS + 1)]
    for case in cases:
        info = read_info(case)
        assert set(info) == INFO_KEYS
        assert info["ED"] == "1"
        assert 1 < int(info["ES"]) <= int(info["NbFrame"])
        assert 140 < float(info["Height"]) < 210 and 40 < float(info["Weight"]) < 140
        expected = {"Info.cfg"} | {p.name for pair in frames(case).values() for p in pair}
        assert {p.name for p in case.iterdir()} == expected
        assert all(
            re.fullmatch(r"patient\d{3}_frame\d{2}(_gt)?\.nii\.gz", name)
            for name in expected - {"Info.cfg"}
        )
    groups = [read_info(case)["Group"] for case in cases]
    assert groups == [group for group in GROUPS for _ in range(SUBJECTS // len(GROUPS))]


@pytest.mark.parametrize("variant", ["default", "wide"])
def test_images_and_labels_agree(generated: Callable[[str], Path], variant: str) -> None:
    for case in cases_of(generated(variant)):
        for image_path, label_path in frames(case).values():
            image, image_nifti = load(image_path)
            label, label_nifti = load(label_path)
            assert image.dtype == np.int16 and label.dtype == np.uint8
            assert image.shape == label.shape
            np.testing.assert_array_equal(image_nifti.affine, label_nifti.affine)
            sx, sy, sz = image_nifti.header.get_zooms()
            assert sx == sy and 1.2 <= sx <= 1.9 and 5.0 <= sz <= 10.0
            np.testing.assert_allclose(np.diag(image_nifti.affine)[:3], (sx, sy, sz), rtol=1e-6)
            assert 6 <= image.shape[2] <= 12
            assert 250 <= image.shape[0] * sx <= 351 and 0.8 * 250 <= image.shape[1] * sy <= 351
            assert set(np.unique(label)) <= {0, 1, 2, 3}
            middle = label[:, :, label.shape[2] // 2]
            assert {1, 2, 3} <= set(np.unique(middle))
            assert image.min() >= 0 and image.std() > 0


@pytest.mark.parametrize("variant", ["default", "wide"])
def test_anatomy_base_to_apex_and_systole(generated: Callable[[str], Path], variant: str) -> None:
    for case in cases_of(generated(variant)):
        (ed_path, ed_label_path), (_, es_label_path) = frames(case).values()
        ed, _ = load(ed_label_path)
        es, _ = load(es_label_path)
        lv, rv = (ed == 3).sum(axis=(0, 1)), (ed == 1).sum(axis=(0, 1))
        assert lv[0] > lv[-1] and rv[0] > 0 and rv[-1] < 0.2 * rv[0]
        assert (ed[:, :, -1] == 2).any()  # the apex keeps its myocardium
        assert (es == 3).sum() < 0.9 * (ed == 3).sum()  # systole: a smaller cavity


@pytest.mark.parametrize("variant", ["default", "wide"])
def test_same_seed_gives_identical_files(tmp_path: Path, variant: str) -> None:
    first = generate_phantom(tmp_path / "a", subjects=2, seed=3, variant=variant)
    second = generate_phantom(tmp_path / "b", subjects=2, seed=3, variant=variant)
    names = sorted(p.relative_to(first) for p in first.rglob("*.nii.gz"))
    assert names == sorted(p.relative_to(second) for p in second.rglob("*.nii.gz"))
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes()
    other = generate_phantom(tmp_path / "c", subjects=2, seed=4, variant=variant)
    ours, _ = load(first / "training/patient001/patient001_frame01.nii.gz")
    theirs, _ = load(other / "training/patient001/patient001_frame01.nii.gz")
    assert ours.shape != theirs.shape or not np.array_equal(ours, theirs)


def blood_to_myocardium(case: Path) -> float:
    image_path, label_path = frames(case)["ED"]
    image, _ = load(image_path)
    label, _ = load(label_path)
    return float(image[label == 3].mean() / image[label == 2].mean())


def test_hard_variant_differs_and_has_lower_contrast(tmp_path: Path, cases: list[Path]) -> None:
    assert {"default", "hard"} <= set(PHANTOM_VARIANTS)
    hard = generate_phantom(tmp_path / "hard", subjects=3, variant="hard")
    easy = generate_phantom(tmp_path / "default", subjects=3)
    hard_cases = sorted((hard / "training").iterdir())
    easy_cases = sorted((easy / "training").iterdir())
    hard_image, _ = load(frames(hard_cases[0])["ED"][0])
    easy_image, _ = load(frames(easy_cases[0])["ED"][0])
    assert hard_image.shape != easy_image.shape or not np.array_equal(hard_image, easy_image)
    hard_contrast = np.mean([blood_to_myocardium(case) for case in hard_cases])
    easy_contrast = np.mean([blood_to_myocardium(case) for case in easy_cases])
    assert hard_contrast < easy_contrast


def test_complete_dataset_is_reused(dataset: Path) -> None:
    probe = dataset / "training/patient001/Info.cfg"
    before = probe.stat().st_mtime_ns
    assert generate_phantom(dataset, subjects=SUBJECTS) == dataset
    assert probe.stat().st_mtime_ns == before
    with pytest.raises(DatasetError, match="phantom.json"):
        generate_phantom(dataset, subjects=SUBJECTS, seed=1)


def test_leftover_partial_folder_does_not_break_generation(tmp_path: Path) -> None:
    leftover = tmp_path / ".acdc.partial-old" / "training" / "patient001"
    leftover.mkdir(parents=True)
    (leftover / "Info.cfg").write_text("ED: 1\n")
    (tmp_path / "acdc").mkdir()  # an empty target folder is replaced
    out = generate_phantom(tmp_path / "acdc", subjects=1)
    assert (out / "phantom.json").is_file()
    assert len(list((out / "training/patient001").iterdir())) == 5


def test_interrupted_generation_leaves_no_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save = phantom.nib.save
    calls = []

    def save_then_fail(image: nib.Nifti1Image, path: str) -> None:
        calls.append(path)
        if len(calls) > 5:
            raise KeyboardInterrupt("interrupted")
        save(image, path)

    monkeypatch.setattr(phantom.nib, "save", save_then_fail)
    with pytest.raises(KeyboardInterrupt):
        generate_phantom(tmp_path / "acdc", subjects=3)
    assert list(tmp_path.iterdir()) == []


def test_foreign_folder_and_bad_arguments_raise(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match=str(foreign)):
        generate_phantom(foreign, subjects=1)
    assert (foreign / "notes.txt").read_text(encoding="utf-8") == "keep me"
    for kwargs in ({"subjects": 0}, {"subjects": 1000}, {"seed": -1}, {"variant": "easy"}):
        with pytest.raises(ValueError, match="generate_phantom"):
            generate_phantom(tmp_path / "x", **kwargs)


def test_few_subjects_still_get_valid_groups(tmp_path: Path) -> None:
    out = generate_phantom(tmp_path / "acdc", subjects=3)
    groups = [read_info(case)["Group"] for case in sorted((out / "training").iterdir())]
    assert groups == ["NOR", "MINF", "HCM"]


def central_slice_measures(case: Path) -> np.ndarray:
    """(3 slices, 3 measures): LV area mm², mean wall thickness mm, blood/myocardium ratio."""
    image_path, label_path = frames(case)["ED"]
    image, nifti = load(image_path)
    label, _ = load(label_path)
    sx, sy, _ = nifti.header.get_zooms()
    middle = label.shape[2] // 2
    rows = []
    for z in (middle - 1, middle, middle + 1):
        lv_area = (label[:, :, z] == 3).sum() * sx * sy
        epi_area = (label[:, :, z] >= 2).sum() * sx * sy
        r_endo, r_epi = np.sqrt(lv_area / np.pi), np.sqrt(epi_area / np.pi)
        blood = image[:, :, z][label[:, :, z] == 3].mean()
        myocardium = image[:, :, z][label[:, :, z] == 2].mean()
        rows.append([lv_area, r_epi - r_endo, blood / myocardium])
    return np.array(rows)


@pytest.mark.parametrize("variant", ["default", "wide"])
def test_between_subject_variation_exceeds_within_subject(
    generated: Callable[[str], Path], variant: str
) -> None:
    cases = cases_of(generated(variant))
    measures = np.stack([central_slice_measures(case) for case in cases])  # (S, 3, 3)
    between = measures[:, 1, :].std(axis=0)  # the same (central) slice across subjects
    within = measures.std(axis=1).mean(axis=0)  # neighbouring slices of one subject
    assert np.all(between > within), (between, within)


@pytest.mark.parametrize("variant", ["default", "wide"])
def test_reads_back_through_the_acdc_reader(generated: Callable[[str], Path], variant: str) -> None:
    dataset = generated(variant)
    cases = cases_of(dataset)
    refs = list_cases(DataConfig(dataset="phantom"), dataset)
    assert [ref.case_id for ref in refs] == [case.name for case in cases]
    for ref, case in zip(refs, cases, strict=True):
        info = read_info(case)
        assert ref.meta["group"] == info["Group"] and ref.meta["frame"] == int(info["ES"])
        volume = load_acdc(ref)
        label, nifti = load(frames(case)["ES"][1])
        assert volume.image.dtype == np.float32 and volume.image.shape == label.shape
        np.testing.assert_array_equal(volume.label, label)
        np.testing.assert_allclose(volume.spacing, nifti.header.get_zooms(), rtol=1e-6)


# -- the wide variant ---------------------------------------------------------------------

WIDE_FIELDS = {"heart_tilt_deg", "gamma", "vessels", "coils", "coil_gain"}


def drawn(variant: str) -> list[phantom.Subject]:
    """What the generator drew for the SUBJECTS subjects (seed 0) of ``variant``."""
    return [draw_subject(index, SUBJECTS, variant=variant) for index in range(SUBJECTS)]


def test_variants_are_the_configs_choices() -> None:
    assert tuple(PHANTOM_VARIANTS) == PHANTOM_VARIANT_NAMES


def test_wide_fields_leave_the_other_variants_alone(generated: Callable[[str], Path]) -> None:
    """default and hard draw neutral values and keep the phantom.json they had before the
    wide fields existed, so their generated folders and TFRecords caches stay valid."""
    marker = json.loads((generated("default") / phantom.MARKER).read_text(encoding="utf-8"))
    assert not WIDE_FIELDS & set(marker["params"])
    assert not WIDE_FIELDS & set(phantom._marker_params(PHANTOM_VARIANTS["hard"]))
    assert set(phantom._marker_params(PHANTOM_VARIANTS["wide"])) >= WIDE_FIELDS
    for subject in drawn("default") + drawn("hard"):
        assert subject.heart.tilt == 0.0 and subject.look.gamma == 1.0
        assert subject.around.vessels.shape == (0, 5) and subject.look.coils.shape == (0, 4)


def rv_direction(case: Path) -> float:
    """Angle (rad) of the RV centroid seen from the LV centroid, central ED slice, in mm."""
    label, nifti = load(frames(case)["ED"][1])
    middle = label[:, :, label.shape[2] // 2]
    sx, sy, _ = nifti.header.get_zooms()
    (rv_x, rv_y), (lv_x, lv_y) = (np.argwhere(middle == k).mean(axis=0) for k in (1, 3))
    return float(np.arctan2((rv_y - lv_y) * sy, (rv_x - lv_x) * sx))


def circular_sd(angles: list[float]) -> float:
    """sqrt(−2 ln R), R the mean resultant length of ``angles`` (rad)."""
    return float(np.sqrt(-2.0 * np.log(np.abs(np.exp(1j * np.asarray(angles)).mean()))))


def test_wide_turns_the_heart_more_than_hard(generated: Callable[[str], Path]) -> None:
    spread = {}
    for variant in ("hard", "wide"):
        measured = [rv_direction(case) for case in cases_of(generated(variant))]
        recorded = [subject.heart.rv_angle for subject in drawn(variant)]
        assert np.abs(phantom._angle_diff(measured, recorded)).max() < 0.3  # draws = volumes
        spread[variant] = circular_sd(measured)
    assert spread["wide"] > 1.5 * spread["hard"], spread
    tilts = np.rad2deg([subject.heart.tilt for subject in drawn("wide")])
    assert tilts.min() >= -50.0 and tilts.max() <= 50.0 and np.ptp(tilts) > 40.0


def test_wide_varies_the_contrast_more_than_hard(generated: Callable[[str], Path]) -> None:
    spread = {}
    for variant in ("hard", "wide"):
        ratios = [blood_to_myocardium(case) for case in cases_of(generated(variant))]
        spread[variant] = float(np.std(np.log(ratios)))
    assert spread["wide"] > 1.5 * spread["hard"], spread
    gammas = np.array([subject.look.gamma for subject in drawn("wide")])
    assert 0.6 <= gammas.min() < 0.8 and 1.25 < gammas.max() <= 1.67
    assert {subject.look.gamma for subject in drawn("hard")} == {1.0}


def test_wide_vessels_vary_by_subject_and_are_never_labeled(
    generated: Callable[[str], Path],
) -> None:
    cases = cases_of(generated("wide"))
    subjects = drawn("wide")
    counts = [len(subject.around.vessels) for subject in subjects]
    assert min(counts) == 0 and max(counts) >= 2, counts  # present in some subjects only
    brightness = []
    for case, subject in zip(cases, subjects, strict=True):
        (ed_image_path, ed_label_path), (_, es_label_path) = frames(case).values()
        image, _ = load(ed_image_path)
        labels = [load(path)[0] for path in (ed_label_path, es_label_path)]
        for disc, _ in phantom.vessel_discs(subject):
            assert disc.any() and all((label[disc] == 0).all() for label in labels)
            core = ndimage.binary_erosion(disc, np.ones((5, 5, 1), bool))
            shown = core.any(axis=(0, 1)) & (labels[0] == 3).any(axis=(0, 1))
            blood = image[:, :, shown][labels[0][:, :, shown] == 3].mean()
            brightness.append(image[core & shown].mean() / blood)
    assert np.median(brightness) > 0.7, brightness  # blood-bright, as the LV cavity

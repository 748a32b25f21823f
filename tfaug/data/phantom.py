"""A synthetic short-axis cardiac cine MR dataset, written in the exact ACDC layout.

:func:`generate_phantom` writes ``out_dir/training/patientXXX/`` folders with ``Info.cfg``,
the ED and ES images ``patientXXX_frameYY.nii.gz`` (int16) and their labels
``patientXXX_frameYY_gt.nii.gz`` (uint8: 0 background, 1 RV, 2 myocardium, 3 LV), so the ACDC
reader reads it unchanged. The generative model (every parameter, its distribution and unit)
is described in ``docs/phantom.md``; :data:`PHANTOM_VARIANTS` holds the named parameter sets.

Arrays are built as (X, Y, Z) = (rows, columns, slices), in mm around the image centre, with a
relative long-axis position ``t`` per slice (0 = base, 1 = apex). Everything is vectorised
numpy; nothing is drawn at import time.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from tfaug.data.volume import DatasetError

GROUPS = ("NOR", "MINF", "DCM", "HCM", "RV")
MARKER = "phantom.json"
_FORMAT_VERSION = 1
_INT16_UNIT = 1000.0  # stored value of a relative intensity of 1 (before subject scaling)

Range = tuple[float, float]


@dataclass(frozen=True)
class PhantomParams:
    """Subject and appearance distributions of one phantom variant (units in the names).

    Ranges ``(low, high)`` are sampled uniformly once per subject. Intensities are relative
    to 1 = a typical blood pool before bias, noise and the subject's intensity scaling.

    Attributes:
        spacing_mm: in-plane pixel size (square pixels), mm.
        slice_spacing_mm: distance between slices, mm.
        fov_mm: field of view along X, mm; Y is 0.8-1.0 times X. Sizes follow FOV / spacing.
        slices: (min, max) number of slices.
        shape_spread: multiplies the within-group standard deviations of LV radius, wall
            thickness and RV depth (``GROUP_SHAPES``).
        ellipticity: minor/major axis ratio of the LV cavity.
        boundary_ripple: amplitude of the 2nd-4th Fourier modes of the endocardium, as a
            fraction of the radius.
        wall_asymmetry: relative amplitude of the cosine variation of wall thickness.
        position_jitter_mm: standard deviation of the LV centre around the image centre, mm.
        blood, myocardium, tissue, fat, lung: relative intensities.
        blur_px: standard deviation of the in-plane Gaussian point-spread function, pixels.
        bias: maximum absolute log-gain of the smooth multiplicative bias field (quadratic
            in-plane, linear through the slices).
        noise: Rician noise standard deviation relative to the blood intensity.
        scale_probability: probability that a subject's intensities are globally rescaled.
        scale: range of that global factor (sampled log-uniformly).
        heart_tilt_deg: rotation of the heart and its neighbours (lungs, liver, aorta,
            spine) about the LV centre, within a body outline that does not turn, degrees.
        gamma: exponent applied to the relative intensities before the acquisition
            (sampled log-uniformly; 1 keeps the tissue contrast linear).
        vessels: (min, max) number of bright blood-like discs beside the heart (label 0).
        coils: (min, max) number of surface-coil hot spots on the body outline.
        coil_gain: peak log-gain of each hot spot.

    The last five fields (the ``wide`` variant's directions) are neutral by default; at
    their defaults they draw nothing from a subject's main random stream and are left
    out of ``phantom.json``, so the other variants' files and markers stay as they were.
    """

    spacing_mm: Range = (1.2, 1.9)
    slice_spacing_mm: Range = (5.0, 10.0)
    fov_mm: Range = (250.0, 350.0)
    slices: tuple[int, int] = (6, 12)
    shape_spread: float = 1.0
    ellipticity: Range = (0.75, 1.0)
    boundary_ripple: float = 0.04
    wall_asymmetry: Range = (0.0, 0.25)
    position_jitter_mm: float = 12.0
    blood: Range = (0.75, 1.0)
    myocardium: Range = (0.12, 0.3)
    tissue: Range = (0.3, 0.5)
    fat: Range = (0.6, 0.9)
    lung: Range = (0.02, 0.08)
    blur_px: Range = (0.4, 0.8)
    bias: Range = (0.1, 0.35)
    noise: Range = (0.02, 0.07)
    scale_probability: float = 0.3
    scale: Range = (0.4, 2.5)
    heart_tilt_deg: Range = (0.0, 0.0)
    gamma: Range = (1.0, 1.0)
    vessels: tuple[int, int] = (0, 0)
    coils: tuple[int, int] = (0, 0)
    coil_gain: Range = (0.0, 0.0)


# The fields added with the ``wide`` variant: omitted from phantom.json at their defaults.
_WIDE_FIELDS = ("heart_tilt_deg", "gamma", "vessels", "coils", "coil_gain")

_HARD = PhantomParams(
    shape_spread=1.5,
    ellipticity=(0.6, 1.0),
    boundary_ripple=0.08,
    wall_asymmetry=(0.0, 0.45),
    position_jitter_mm=20.0,
    blood=(0.55, 0.85),
    myocardium=(0.2, 0.4),
    fat=(0.5, 0.8),
    blur_px=(0.6, 1.2),
    bias=(0.3, 0.6),
    noise=(0.05, 0.12),
    scale_probability=0.5,
    scale=(0.25, 4.0),
)

PHANTOM_VARIANTS: dict[str, PhantomParams] = {
    "default": PhantomParams(),
    "hard": _HARD,
    # hard, plus what neither of the others varies: heart orientation, non-linear contrast,
    # unlabeled blood-bright vessels and coil hot spots; blood and myocardium cover both.
    "wide": replace(
        _HARD,
        blood=(0.55, 1.0),
        myocardium=(0.12, 0.4),
        heart_tilt_deg=(-50.0, 50.0),
        gamma=(0.6, 1.67),
        vessels=(0, 3),
        coils=(1, 2),
        coil_gain=(0.3, 0.8),
    ),
}


@dataclass(frozen=True)
class GroupShape:
    """Shape tendencies of one ACDC pathology group (end-diastole; mm unless stated).

    ``(mean, sd)`` pairs are normal distributions (sd scaled by ``shape_spread``);
    other pairs are uniform ranges. Contractions are ES/ED ratios of linear size.
    """

    lv_radius: tuple[float, float]
    wall: tuple[float, float]
    rv_depth: tuple[float, float]
    rv_half_span_deg: Range
    lv_contraction: Range
    rv_contraction: Range
    septal_hypertrophy: Range = (0.0, 0.0)
    infarct_thinning: Range = (0.0, 0.0)


GROUP_SHAPES: dict[str, GroupShape] = {
    # lv_radius, wall, rv_depth, rv_half_span_deg, lv_contraction, rv_contraction
    "NOR": GroupShape((28, 3), (8, 1), (24, 3), (60, 80), (0.6, 0.75), (0.55, 0.75)),
    "MINF": GroupShape(
        (31, 4), (8, 1), (24, 3), (60, 80), (0.78, 0.9), (0.6, 0.8), infarct_thinning=(0.4, 0.7)
    ),
    "DCM": GroupShape((36, 4), (6, 0.8), (24, 3), (60, 80), (0.85, 0.95), (0.7, 0.9)),
    "HCM": GroupShape(
        (25, 3),
        (14, 2),
        (22, 3),
        (60, 80),
        (0.45, 0.6),
        (0.55, 0.75),
        septal_hypertrophy=(0.2, 0.5),
    ),
    "RV": GroupShape((27, 3), (8, 1), (38, 4), (75, 100), (0.6, 0.75), (0.8, 0.95)),
}


@dataclass(frozen=True)
class _Grid:
    """Voxel centres in mm from the image centre: x (X,1,1), y (1,Y,1); t (1,1,Z) base→apex."""

    x: np.ndarray
    y: np.ndarray
    t: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.x.shape[0], self.y.shape[1], self.t.shape[2])


@dataclass(frozen=True)
class _Heart:
    """One subject's heart at end-diastole; angles in radians, lengths in mm."""

    centre: list[float]  # LV centre (x, y) at the base
    drift: list[float]  # displacement (x, y) of the LV centre from base to apex
    radius: float
    ellipticity: float
    orientation: float
    ripple: list[tuple[float, float]]  # amplitude and phase of Fourier modes 2, 3, 4
    wall: float
    asymmetry: float
    asymmetry_angle: float
    infarct: float
    infarct_angle: float
    infarct_width: float
    rv_angle: float
    rv_depth: float
    rv_half_span: float
    rv_extent: float
    rv_wall: float
    lv_contraction: float
    rv_contraction: float
    fat: float
    fat_angle: float
    papillary: float
    tilt: float = 0.0  # rotation within the body (heart_tilt_deg), already in the angles above


@dataclass(frozen=True)
class _Surroundings:
    """Body and organs around the heart; positions in mm from the image centre."""

    body_centre: np.ndarray  # (2,)
    body_radii: np.ndarray  # (2,)
    rotation: float
    fat_mm: float
    muscle_mm: float
    lungs: np.ndarray  # (2, 5): centre x, centre y, long radius, short radius, long-axis angle
    liver: np.ndarray  # (4,): centre x, centre y, radius, first t where it appears
    aorta: np.ndarray  # (3,): centre x, centre y, radius
    spine: np.ndarray  # (3,)
    blobs: np.ndarray  # (n, 4): centre x, centre y, sigma, amplitude
    # (n, 5): offset x, y from the LV centre c(t), radius, intensity / LV blood, last t shown
    vessels: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), np.float32))


@dataclass(frozen=True)
class _Look:
    """Relative intensities and acquisition parameters of one subject."""

    blood: float
    rv_blood: float
    myocardium: float
    tissue: float
    muscle: float
    fat: float
    lung: float
    liver: float
    blood_slices: np.ndarray  # (Z,) per-slice blood factor (inflow)
    blur: float
    bias: list[float]  # 6 coefficients of the smooth log-gain (see _acquire)
    bias_strength: float
    noise: float
    scale: float
    gamma: float = 1.0  # exponent on the relative intensities
    coils: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # (n, 4)


def _angle_diff(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """Signed difference a - b wrapped to [-pi, pi)."""
    return (np.asarray(a) - b + np.pi) % (2 * np.pi) - np.pi


def _draw_grid(rng: np.random.Generator, params: PhantomParams, group: str) -> _Grid:
    """Pixel and slice spacing, image size and slice positions t of one subject."""
    spacing = rng.uniform(*params.spacing_mm)
    fov_x = rng.uniform(*params.fov_mm)
    fov_y = fov_x * rng.uniform(0.8, 1.0)
    slice_spacing = rng.uniform(*params.slice_spacing_mm)
    length = rng.uniform(55.0, 100.0) * (1.15 if group == "DCM" else 1.0)  # covered, mm
    n_slices = int(np.clip(round(length / slice_spacing), *params.slices))
    sizes = [int(round(fov / spacing)) for fov in (fov_x, fov_y)]
    x, y = ((np.arange(n, dtype=np.float32) - (n - 1) / 2) * spacing for n in sizes)
    t = np.linspace(rng.uniform(-0.05, 0.08), rng.uniform(0.9, 1.06), n_slices)
    return _Grid(
        x.reshape(-1, 1, 1),
        y.reshape(1, -1, 1),
        t.astype(np.float32).reshape(1, 1, -1),
        (float(spacing), float(spacing), float(slice_spacing)),
    )


def _draw_heart(rng: np.random.Generator, params: PhantomParams, group: str) -> _Heart:
    """End-diastolic heart shape, from the group tendencies and the variant's spreads."""
    shape = GROUP_SHAPES[group]
    spread = params.shape_spread

    def normal(mean_sd: tuple[float, float], low: float) -> float:
        return float(max(low, rng.normal(mean_sd[0], mean_sd[1] * spread)))

    rotation = rng.normal(0.0, 0.25)
    rv_angle = rotation + 0.75 * np.pi + rng.normal(0.0, 0.2)
    septal = rng.uniform(*shape.septal_hypertrophy)
    return _Heart(
        centre=np.clip(rng.normal(0.0, params.position_jitter_mm, 2), -40.0, 40.0).tolist(),
        drift=rng.normal(0.0, 6.0, 2).tolist(),
        radius=normal(shape.lv_radius, 12.0),
        ellipticity=rng.uniform(*params.ellipticity),
        orientation=rng.uniform(0.0, np.pi),
        ripple=[
            (rng.uniform(0, params.boundary_ripple), rng.uniform(0, 2 * np.pi)) for _ in range(3)
        ],
        wall=normal(shape.wall, 3.0),
        asymmetry=septal if septal > 0 else rng.uniform(*params.wall_asymmetry),
        asymmetry_angle=rv_angle if septal > 0 else rng.uniform(0.0, 2 * np.pi),
        infarct=rng.uniform(*shape.infarct_thinning),
        infarct_angle=rng.uniform(0.0, 2 * np.pi),
        infarct_width=rng.uniform(0.3, 0.6),
        rv_angle=rv_angle,
        rv_depth=normal(shape.rv_depth, 5.0),
        rv_half_span=float(np.deg2rad(rng.uniform(*shape.rv_half_span_deg))),
        rv_extent=rng.uniform(0.7, 0.95),
        rv_wall=rng.uniform(2.0, 4.0),
        lv_contraction=rng.uniform(*shape.lv_contraction),
        rv_contraction=rng.uniform(*shape.rv_contraction),
        fat=rng.uniform(0.0, 8.0),
        fat_angle=rng.uniform(0.0, 2 * np.pi),
        papillary=rng.uniform(2.0, 3.5),
    )


def _draw_surroundings(rng: np.random.Generator, grid: _Grid, heart: _Heart) -> _Surroundings:
    """Body, lungs, liver, aorta, spine and blobs, placed relative to the heart.

    The organs follow the heart's tilt; the body outline (and its fat and muscle) does not.
    """
    rotation = heart.rv_angle - heart.tilt - 0.75 * np.pi

    def around(angle: float, distance: float) -> np.ndarray:
        return np.asarray(heart.centre) + distance * np.array([np.cos(angle), np.sin(angle)])

    lungs = []  # right lung beyond the RV, left lung along the LV free wall
    for side, distance in ((0.0, (95.0, 120.0)), (np.pi, (65.0, 85.0))):
        angle = heart.rv_angle + side + rng.normal(0.0, 0.2)
        radii = rng.uniform([45.0, 30.0], [75.0, 50.0])
        lungs.append([*around(angle, rng.uniform(*distance)), *radii, angle + np.pi / 2])
    half = np.array([grid.x.max(), grid.y.max()])
    n_blobs = int(rng.integers(3, 7))
    blobs = np.concatenate(
        [
            rng.uniform(-half, half, (n_blobs, 2)),
            rng.uniform(8.0, 25.0, (n_blobs, 1)),
            rng.uniform(-0.1, 0.15, (n_blobs, 1)),
        ],
        axis=1,
    )
    back = heart.rv_angle - np.pi / 2 + rng.normal(0.0, 0.3)
    return _Surroundings(
        body_centre=rng.normal(0.0, 8.0, 2),
        body_radii=rng.uniform([140.0, 100.0], [190.0, 140.0]),
        rotation=rotation,
        fat_mm=rng.uniform(5.0, 20.0),
        muscle_mm=rng.uniform(8.0, 15.0),
        lungs=np.array(lungs),
        liver=np.array(
            [
                *around(heart.rv_angle + rng.uniform(-0.4, 0.4), rng.uniform(80, 110)),
                rng.uniform(50, 80),
                rng.uniform(0.3, 0.7),
            ]
        ),
        aorta=np.array([*around(back, rng.uniform(50, 65)), rng.uniform(9, 13)]),
        spine=np.array([*around(back, rng.uniform(90, 105)), rng.uniform(15, 20)]),
        blobs=blobs,
    )


def _draw_look(rng: np.random.Generator, params: PhantomParams, n_slices: int) -> _Look:
    """Tissue intensities, blur, bias field, noise level and global scale of one subject."""
    blood = rng.uniform(*params.blood)
    tissue = rng.uniform(*params.tissue)
    rescaled = rng.random() < params.scale_probability
    scale = _log_uniform(rng, params.scale) if rescaled else 1.0
    return _Look(
        blood=blood,
        rv_blood=blood * rng.uniform(0.85, 1.0),
        myocardium=rng.uniform(*params.myocardium),
        tissue=tissue,
        muscle=tissue * rng.uniform(0.6, 0.85),
        fat=rng.uniform(*params.fat),
        lung=rng.uniform(*params.lung),
        liver=rng.uniform(0.3, 0.5),
        blood_slices=(1.0 + rng.normal(0.0, 0.03, n_slices)).astype(np.float32),
        blur=rng.uniform(*params.blur_px),
        bias=rng.normal(0.0, 1.0, 6).tolist(),
        bias_strength=rng.uniform(*params.bias),
        noise=rng.uniform(*params.noise),
        scale=float(scale),
    )


def _log_uniform(rng: np.random.Generator, bounds: Range) -> float:
    """One draw of exp(U(log low, log high)); exactly ``low`` when low == high."""
    return float(np.exp(rng.uniform(*np.log(bounds))))


def _tilted(heart: _Heart, angle: float) -> _Heart:
    """The heart rotated rigidly by ``angle`` (rad) about its LV centre (drift excepted)."""
    return replace(
        heart,
        orientation=heart.orientation + angle,
        ripple=[
            (amplitude, phase - k * angle)
            for k, (amplitude, phase) in enumerate(heart.ripple, start=2)
        ],
        asymmetry_angle=heart.asymmetry_angle + angle,
        infarct_angle=heart.infarct_angle + angle,
        rv_angle=heart.rv_angle + angle,
        fat_angle=heart.fat_angle + angle,
        tilt=heart.tilt + angle,
    )


def _heart_reach(heart: _Heart) -> float:
    """Bound (mm) on the distance from the LV centre to the heart's outer edge (fat included),
    at every slice and phase."""
    ripple = np.prod([1.0 + amplitude for amplitude, _ in heart.ripple])
    endo = heart.radius * ripple / np.sqrt(min(heart.ellipticity, 1.0 / heart.ellipticity))
    return float(
        endo + heart.wall * (1 + heart.asymmetry) + heart.rv_depth + heart.rv_wall + heart.fat
    )


def _outer_radius(heart: _Heart, t: np.ndarray, angles: np.ndarray) -> float:
    """Distance (mm) from the LV centre c(t) beyond which nothing of the end-diastolic heart
    (fat included) lies along ``angles`` (rad, any shape), at any slice position ``t``
    (1, 1, Z). End-systole lies inside end-diastole along every ray.

    Samples :func:`_window_masks` every 0.5 mm along each ray (it broadcasts, so a ``_Grid``
    whose x and y hold the ray points works).
    """
    radii = np.arange(0.0, _heart_reach(heart) + 1.0, 0.5, dtype=np.float32)
    along_x = np.multiply.outer(radii, np.cos(angles).ravel()).reshape(-1, 1, 1)
    along_y = np.multiply.outer(radii, np.sin(angles).ravel()).reshape(-1, 1, 1)
    x = along_x + (heart.centre[0] + t * heart.drift[0])
    y = along_y + (heart.centre[1] + t * heart.drift[1])
    masks = _window_masks(_Grid(x, y, t, (0.5, 0.5, 0.0)), heart, systole=False)
    inside = np.logical_or.reduce(list(masks.values())).reshape(radii.size, -1)
    return float(radii[inside.any(axis=1)].max() + 0.5)


def _clear_distance(heart: _Heart, t: np.ndarray, angle: float, radius: float, gap: float) -> float:
    """Distance (mm) from the LV centre c(t) at which a disc of ``radius`` mm in direction
    ``angle`` (rad) stays ``gap`` mm clear of the end-diastolic heart at every slice ``t``.

    The heart is probed over the angles the disc spans seen from the LV centre; widening the
    window can only push the disc out and narrow what it spans, so two rounds suffice.
    """
    half = 0.3
    while True:
        outer = _outer_radius(heart, t, angle + np.linspace(-half, half, 25))
        distance = outer + radius + gap
        spanned = float(np.arcsin(radius / distance))
        if spanned <= half:
            return distance
        half = spanned


def _draw_vessels(
    rng: np.random.Generator, params: PhantomParams, grid: _Grid, heart: _Heart
) -> np.ndarray:
    """(n, 5) blood-bright discs beside the heart, never overlapping it (label 0).

    Columns: offset x, y from the LV centre c(t) in mm (they follow the heart through the
    slices), radius U(6, 14) mm, intensity U(0.8, 1.15) times the LV blood, and the last t
    where the disc is shown, U(0.2, 1.1) (≥ the apex: every slice). In a direction U(0, 2π),
    the disc's edge lies U(1, 8) mm beyond the heart's outer edge (:func:`_clear_distance`).
    """
    rows = []
    for _ in range(int(rng.integers(params.vessels[0], params.vessels[1] + 1))):
        angle = rng.uniform(0.0, 2 * np.pi)
        radius = rng.uniform(6.0, 14.0)
        distance = _clear_distance(heart, grid.t, angle, radius, rng.uniform(1.0, 8.0))
        offset = distance * np.array([np.cos(angle), np.sin(angle)])
        rows.append([*offset, radius, rng.uniform(0.8, 1.15), rng.uniform(0.2, 1.1)])
    return np.array(rows, np.float32).reshape(-1, 5)


def _draw_coils(
    rng: np.random.Generator, params: PhantomParams, around: _Surroundings
) -> np.ndarray:
    """(n, 4) surface-coil hot spots on the body outline: centre x, y (mm), falloff U(60, 120)
    mm, peak log-gain U(**coil_gain**); at an angle U(0, 2π) around the body centre."""
    n = int(rng.integers(params.coils[0], params.coils[1] + 1))
    angle = rng.uniform(0.0, 2 * np.pi, n)
    u, v = around.body_radii[0] * np.cos(angle), around.body_radii[1] * np.sin(angle)
    cos, sin = np.cos(around.rotation), np.sin(around.rotation)
    x = around.body_centre[0] + u * cos - v * sin
    y = around.body_centre[1] + u * sin + v * cos
    falloff, gain = rng.uniform(60.0, 120.0, n), rng.uniform(*params.coil_gain, n)
    return np.stack([x, y, falloff, gain], axis=1).astype(np.float32)


@dataclass(frozen=True)
class Subject:
    """Everything drawn for one subject before its two phases are rendered.

    ``heart.rv_angle`` (rad) is the septal direction θ, tilt included; ``heart.tilt`` the
    tilt alone; ``look.gamma`` the contrast exponent; ``around.vessels`` the unlabeled discs
    (:func:`_draw_vessels`); ``look.coils`` the coil hot spots (:func:`_draw_coils`).
    """

    group: str
    grid: _Grid
    heart: _Heart
    around: _Surroundings
    look: _Look


def _draw_subject(rng: np.random.Generator, params: PhantomParams, group: str) -> Subject:
    """Draw one subject. The ``wide`` fields draw from a child stream (``rng.spawn``), so the
    main stream, and every draw of the other variants, is what it was without them."""
    wide = rng.spawn(1)[0]
    grid = _draw_grid(rng, params, group)
    tilt = float(np.deg2rad(wide.uniform(*params.heart_tilt_deg)))
    heart = _tilted(_draw_heart(rng, params, group), tilt)
    around = _draw_surroundings(rng, grid, heart)
    look = _draw_look(rng, params, grid.shape[2])
    around = replace(around, vessels=_draw_vessels(wide, params, grid, heart))
    coils = _draw_coils(wide, params, around)
    look = replace(look, gamma=_log_uniform(wide, params.gamma), coils=coils)
    return Subject(group, grid, heart, around, look)


def _heart_masks(grid: _Grid, heart: _Heart, systole: bool) -> dict[str, np.ndarray]:
    """:func:`_window_masks` computed in the heart's bounding box, embedded in (X, Y, Z)."""
    reach = _heart_reach(heart)
    windows = []
    for axis, coordinate in enumerate((grid.x.ravel(), grid.y.ravel())):
        ends = [heart.centre[axis] + heart.drift[axis] * t for t in (grid.t.min(), grid.t.max())]
        low, high = np.searchsorted(coordinate, [min(ends) - reach, max(ends) + reach])
        windows.append(slice(max(0, low - 2), min(coordinate.size, high + 2)))
    window = _Grid(grid.x[windows[0]], grid.y[:, windows[1]], grid.t, grid.spacing)
    masks = {}
    for name, mask in _window_masks(window, heart, systole).items():
        masks[name] = np.zeros(grid.shape, bool)
        masks[name][windows[0], windows[1]] = mask
    return masks


def _window_masks(grid: _Grid, heart: _Heart, systole: bool) -> dict[str, np.ndarray]:
    """Boolean (X, Y, Z) masks: lv, myo, rv (labels) and rv_wall, fat, papillary (image only).

    The LV cavity, the myocardium and the RV are star-shaped in polar coordinates around the
    LV centre: endocardium radius r_endo(phi, t), epicardium r_endo + wall(phi, t), RV between
    the epicardium and r_epi + depth(phi, t) on the septal side. At end-systole the cavity
    shrinks by the contraction factor and the wall thickens so each sector keeps its area.
    """
    t = grid.t
    cx = heart.centre[0] + t * heart.drift[0]
    cy = heart.centre[1] + t * heart.drift[1]
    dx, dy = grid.x - cx, grid.y - cy
    r = np.hypot(dx, dy)
    phi = np.arctan2(dy, dx)

    along = phi - heart.orientation
    e = heart.ellipticity
    endo = heart.radius / np.sqrt(e * np.cos(along) ** 2 + np.sin(along) ** 2 / e)
    for k, (amplitude, phase) in enumerate(heart.ripple, start=2):
        endo = endo * (1.0 + amplitude * np.cos(k * phi + phase))
    endo = endo * np.sqrt(np.clip(1.0 - t**2, 0.0, 1.0))  # ellipsoidal base-to-apex profile
    wall = heart.wall * (1.0 + heart.asymmetry * np.cos(phi - heart.asymmetry_angle))
    infarct_distance = _angle_diff(phi, heart.infarct_angle) / heart.infarct_width
    wall = wall * (1.0 - heart.infarct * np.exp(-0.5 * infarct_distance**2))
    wall = wall * np.sqrt(np.clip((1.12 - t) / 0.12, 0.0, 1.0))  # myocardial cap beyond t = 1
    epi = endo + wall
    if systole:
        endo_es = endo * heart.lv_contraction
        epi = np.sqrt(endo_es**2 + epi**2 - endo**2)
        endo = endo_es

    rv_profile = np.sqrt(np.clip(1.0 - (t / heart.rv_extent) ** 2, 0.0, 1.0))
    half_span = heart.rv_half_span * (0.6 + 0.4 * rv_profile)
    across = _angle_diff(phi, heart.rv_angle) / half_span
    depth = heart.rv_depth * rv_profile * np.sqrt(np.clip(1.0 - across**2, 0.0, 1.0))
    if systole:
        depth = depth * heart.rv_contraction
    rv_outer = epi + depth
    has_rv = depth > 0
    heart_outer = np.where(has_rv, rv_outer + heart.rv_wall, epi)
    fat = heart.fat * np.clip(np.cos(phi - heart.fat_angle), 0.0, 1.0) ** 2

    lv = r < endo
    papillary = np.zeros_like(lv)
    for offset in (-0.6, 0.6):
        angle = heart.rv_angle + np.pi + offset
        distance = 0.6 * heart.radius * np.sqrt(np.clip(1.0 - t**2, 0.0, 1.0))
        distance = distance * (heart.lv_contraction if systole else 1.0)
        px, py = distance * np.cos(angle), distance * np.sin(angle)
        papillary |= np.hypot(dx - px, dy - py) < heart.papillary * (t > 0.15) * (t < 0.8)
    return {
        "lv": lv,
        "myo": (r >= endo) & (r < epi),
        "rv": (r >= epi) & (r < rv_outer) & has_rv,
        "rv_wall": (r >= rv_outer) & (r < heart_outer) & has_rv,
        "fat": (r >= heart_outer) & (r < heart_outer + fat),
        "papillary": papillary & lv,
    }


def _ellipse(
    grid: _Grid, centre: np.ndarray, radii: np.ndarray | tuple, angle: float
) -> np.ndarray:
    """Normalised elliptical radius (X, Y, 1): < 1 inside the ellipse, radii in mm."""
    dx, dy = grid.x - centre[0], grid.y - centre[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    return np.hypot(u / radii[0], v / radii[1])


def _paint_surroundings(grid: _Grid, around: _Surroundings, look: _Look) -> np.ndarray:
    """Float32 (X, Y, Z) relative-intensity image of the body without the heart."""
    image = np.zeros(grid.shape, np.float32)
    body = _ellipse(grid, around.body_centre, around.body_radii, around.rotation)
    depth_mm = (1.0 - body) * around.body_radii.min()  # approximate depth below the skin
    image += np.where(body < 1.0, look.tissue, 0.0)
    image = np.where((depth_mm > 0) & (depth_mm < around.fat_mm), look.fat, image)
    chest_wall = (depth_mm >= around.fat_mm) & (depth_mm < around.fat_mm + around.muscle_mm)
    image = np.where(chest_wall, look.muscle, image)
    for cx, cy, long, short, angle in around.lungs:
        lung = _ellipse(grid, (cx, cy), (long, short), angle) < 1.0
        image = np.where(lung & (body < 1.0), look.lung, image)
    liver_x, liver_y, liver_radius, liver_start = around.liver
    growth = np.sqrt(np.clip((grid.t - liver_start) / (1.0 - liver_start), 0.0, 1.0))
    liver = np.hypot(grid.x - liver_x, grid.y - liver_y) < liver_radius * growth
    image = np.where(liver & (body < 1.0), look.liver, image)
    for (cx, cy, radius), value in ((around.aorta, look.blood), (around.spine, look.muscle)):
        image = np.where(np.hypot(grid.x - cx, grid.y - cy) < radius, value, image)
    for cx, cy, sigma, amplitude in around.blobs:
        bump = amplitude * np.exp(-((grid.x - cx) ** 2 + (grid.y - cy) ** 2) / (2 * sigma**2))
        image = image + np.where(body < 1.0, bump, 0.0)
    return np.broadcast_to(image, grid.shape).astype(np.float32)


def vessel_discs(subject: Subject) -> list[tuple[np.ndarray, float]]:
    """Each of ``subject.around.vessels`` as a boolean (X, Y, Z) disc (on the slices where it
    is shown) and its intensity relative to the LV blood."""
    grid, heart = subject.grid, subject.heart
    discs = []
    for dx, dy, radius, factor, last_t in subject.around.vessels:
        cx = heart.centre[0] + grid.t * heart.drift[0] + dx
        cy = heart.centre[1] + grid.t * heart.drift[1] + dy
        disc = (np.hypot(grid.x - cx, grid.y - cy) < radius) & (grid.t <= last_t)
        discs.append((disc, float(factor)))
    return discs


def _paint_vessels(image: np.ndarray, subject: Subject) -> np.ndarray:
    """``image`` (X, Y, Z) with the blood-bright discs of ``subject.around.vessels``."""
    for disc, factor in vessel_discs(subject):
        image = np.where(disc, np.float32(factor * subject.look.blood), image)
    return image


def _contrast(image: np.ndarray, gamma: float) -> np.ndarray:
    """Relative intensities through ``max(I, 0) ** gamma`` (blood stays near 1, darker tissue
    darkens for gamma > 1 and brightens for gamma < 1); untouched when gamma is 1."""
    if gamma == 1.0:
        return image
    return np.maximum(image, 0.0) ** np.float32(gamma)


def _coil_log_gain(grid: _Grid, coils: np.ndarray) -> np.ndarray | float:
    """Sum of the Gaussian log-gains g · exp(−d² / 2λ²) of ``coils`` (n, 4), (X, Y, 1)."""
    total: np.ndarray | float = 0.0
    for cx, cy, falloff, gain in coils:
        squared = (grid.x - cx) ** 2 + (grid.y - cy) ** 2
        total = total + gain * np.exp(-squared / (2 * falloff**2))
    return total


def _acquire(image: np.ndarray, grid: _Grid, look: _Look, rng: np.random.Generator) -> np.ndarray:
    """Blur, bias field (and coil hot spots), Rician noise and intensity scaling; returns int16
    (X, Y, Z)."""
    image = ndimage.gaussian_filter(image, sigma=(look.blur, look.blur, 0.0))
    u = grid.x / np.abs(grid.x).max()
    v = grid.y / np.abs(grid.y).max()
    w = grid.t - 0.5
    terms = (u, v, u * v, u**2, v**2, w)
    log_gain = sum(c * term for c, term in zip(look.bias, terms, strict=True))
    log_gain = log_gain * (look.bias_strength / max(float(np.abs(log_gain).max()), 1e-6))
    image = image * np.exp(log_gain + _coil_log_gain(grid, look.coils))
    sigma = np.float32(look.noise * look.blood)
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    image = np.hypot(real, imaginary) * (look.scale * _INT16_UNIT)
    return np.clip(np.round(image), 0, np.iinfo(np.int16).max).astype(np.int16)


def _paint_background(subject: Subject) -> np.ndarray:
    """Float32 (X, Y, Z) relative-intensity image of everything but the heart: the body, its
    organs and the vessels, the same at ED and ES."""
    return _paint_vessels(_paint_surroundings(subject.grid, subject.around, subject.look), subject)


def _render(
    subject: Subject, background: np.ndarray, systole: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One cardiac phase drawn over ``background`` (:func:`_paint_background`): int16 image
    and uint8 label, both (X, Y, Z)."""
    grid, heart, look = subject.grid, subject.heart, subject.look
    masks = _heart_masks(grid, heart, systole)
    blood = look.blood * look.blood_slices
    rv_blood = look.rv_blood * look.blood_slices
    image = np.where(masks["fat"], look.fat, background)
    image = np.where(masks["myo"] | masks["rv_wall"], look.myocardium, image)
    image = np.where(masks["rv"], rv_blood, image)
    image = np.where(masks["lv"], blood, image)
    image = np.where(masks["papillary"], look.myocardium, image).astype(np.float32)
    label = np.zeros(grid.shape, np.uint8)
    label[masks["rv"]] = 1
    label[masks["myo"]] = 2
    label[masks["lv"]] = 3
    return _acquire(_contrast(image, look.gamma), grid, look, rng), label


def _group_of(index: int, subjects: int) -> str:
    """Group of the 0-based subject ``index``: contiguous blocks of subjects / 5, as in ACDC."""
    return GROUPS[min(len(GROUPS) - 1, index * len(GROUPS) // subjects)]


def _subject_rng(seed: int, variant: str, index: int) -> np.random.Generator:
    """The generator of one subject: independent of the number of subjects."""
    return np.random.default_rng([seed, zlib.crc32(variant.encode()), index])


def _write_subject(
    training: Path, index: int, group: str, params: PhantomParams, rng: np.random.Generator
) -> None:
    """Draw subject ``index`` (0-based) and write its ACDC folder under ``training``."""
    subject = _draw_subject(rng, params, group)
    grid = subject.grid
    n_frames = int(rng.integers(12, 36))
    es_frame = int(np.clip(round(n_frames * rng.uniform(0.3, 0.45)), 2, n_frames))
    height = float(np.clip(rng.normal(170.0, 9.0), 145.0, 200.0))
    weight = float(np.clip(rng.normal(75.0, 14.0), 45.0, 130.0))

    name = f"patient{index + 1:03d}"
    case = training / name
    case.mkdir()
    (case / "Info.cfg").write_text(
        f"ED: 1\nES: {es_frame}\nGroup: {group}\nHeight: {height:.1f}\n"
        f"NbFrame: {n_frames}\nWeight: {weight:.1f}\n",
        encoding="utf-8",
    )
    affine = np.diag([*grid.spacing, 1.0])
    affine[:3, 3] = [-(n - 1) / 2 * s for n, s in zip(grid.shape, grid.spacing, strict=True)]
    background = _paint_background(subject)
    for frame, systole in ((1, False), (es_frame, True)):
        image, label = _render(subject, background, systole, rng)
        stem = case / f"{name}_frame{frame:02d}"
        for array, suffix in ((image, ""), (label, "_gt")):
            nifti = nib.Nifti1Image(array, affine)
            nifti.header.set_xyzt_units("mm", "sec")
            nib.save(nifti, f"{stem}{suffix}.nii.gz")


def _check_arguments(subjects: int, seed: int, variant: str) -> None:
    """Raise ValueError for arguments :func:`generate_phantom` cannot use."""
    if isinstance(subjects, bool) or not isinstance(subjects, int) or not 1 <= subjects <= 999:
        raise ValueError(
            f"generate_phantom: subjects must be an integer in 1..999 (ACDC ids have three "
            f"digits), found {subjects!r}. Pass e.g. subjects=100."
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(
            f"generate_phantom: seed must be a non-negative integer, found {seed!r}. "
            f"Pass e.g. seed=0."
        )
    if variant not in PHANTOM_VARIANTS:
        raise ValueError(
            f"generate_phantom: unknown variant {variant!r}; choose one of "
            f"{', '.join(sorted(PHANTOM_VARIANTS))}."
        )


def draw_subject(
    index: int, subjects: int = 100, seed: int = 0, variant: str = "default"
) -> Subject:
    """What :func:`generate_phantom` draws for 0-based subject ``index``, without writing it.

    The same values the written files are made from (the per-phase noise aside), e.g. to
    measure the spread of the heart's orientation (``heart.rv_angle``, rad) or of the
    contrast exponent (``look.gamma``) over subjects, or to find the unlabeled vessels
    (``around.vessels``, mm from the LV centre) in the images.

    Raises:
        ValueError: bad ``subjects``, ``seed`` or ``variant``, or ``index`` not in
            0..subjects - 1.
    """
    _check_arguments(subjects, seed, variant)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < subjects:
        raise ValueError(
            f"draw_subject: index must be an integer in 0..{subjects - 1}, found {index!r}."
        )
    rng = _subject_rng(seed, variant, index)
    return _draw_subject(rng, PHANTOM_VARIANTS[variant], _group_of(index, subjects))


def _marker_params(params: PhantomParams) -> dict[str, object]:
    """The parameters ``phantom.json`` records: the ``wide`` fields are left out at their
    neutral defaults, so the markers of the other variants (and their caches) stay valid."""
    neutral = asdict(PhantomParams())
    return {
        key: value
        for key, value in asdict(params).items()
        if key not in _WIDE_FIELDS or value != neutral[key]
    }


def _existing_phantom(out_dir: Path, wanted: dict[str, object]) -> bool:
    """True if ``out_dir`` holds a complete phantom generated with ``wanted``.

    Returns False if ``out_dir`` is missing or an empty folder. Raises :class:`DatasetError`
    if it holds anything else, so a different dataset is never overwritten.
    """
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return False
    marker = out_dir / MARKER
    if not marker.is_file():
        found = "a file" if out_dir.is_file() else f"a folder without {MARKER}"
        raise DatasetError(
            f"{out_dir}: expected a complete phantom (with {MARKER}) or nothing, found "
            f"{found}. Remove it or choose another out_dir."
        )
    try:
        found = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DatasetError(
            f"{marker}: expected the JSON parameters of the phantom, found unreadable content "
            f"({error}). Remove {out_dir} to regenerate it."
        ) from error
    if found != wanted:
        raise DatasetError(
            f"{marker}: expected a phantom generated with {wanted}, found {found}. "
            f"Remove {out_dir} or choose another out_dir for these parameters."
        )
    return True


def generate_phantom(
    out_dir: Path | str, subjects: int = 100, seed: int = 0, variant: str = "default"
) -> Path:
    """Write the synthetic cardiac dataset in the ACDC layout and return ``out_dir``.

    Layout: ``out_dir/training/patientXXX/`` (XXX = 001..subjects) with ``Info.cfg``
    (``ED: 1``, ``ES: k``, ``Group``, ``Height`` cm, ``NbFrame``, ``Weight`` kg),
    ``patientXXX_frame01.nii.gz`` and ``patientXXX_frameKK.nii.gz`` (int16, shape (X, Y, Z),
    X 130-290 and Y 105-290 pixels, Z 6-12 slices; affine diagonal with the spacing in mm) and the
    matching ``..._gt.nii.gz`` labels (uint8, 0 background, 1 RV, 2 myocardium, 3 LV), plus a
    ``phantom.json`` marker with the arguments and the variant's parameters. Groups NOR, MINF,
    DCM, HCM, RV come in contiguous blocks of subjects / 5. Voxel data (and file bytes) are
    identical for the same (subjects, seed, variant); subject i's random stream does not
    depend on ``subjects`` (only its group does).

    Writing is atomic: the dataset is built in a hidden sibling folder and renamed into
    place, so an interrupted run leaves no partial ``out_dir`` (a leftover hidden folder is
    ignored). A complete ``out_dir`` with the same arguments is returned as is.

    Does not write the ACDC ``patientXXX_4d.nii.gz`` files, nor a ``testing/`` folder.

    Args:
        out_dir: the dataset folder to create (its parent is created if needed).
        subjects: number of patients, 1..999.
        seed: non-negative integer seed.
        variant: a key of :data:`PHANTOM_VARIANTS` (``"default"``, ``"hard"`` or ``"wide"``).

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: bad ``subjects``, ``seed`` or ``variant``.
        DatasetError: ``out_dir`` exists and is not this phantom.
    """
    _check_arguments(subjects, seed, variant)
    out_dir = Path(out_dir)
    params = PHANTOM_VARIANTS[variant]
    wanted = {"format": _FORMAT_VERSION, "subjects": subjects, "seed": seed, "variant": variant}
    wanted = json.loads(json.dumps({**wanted, "params": _marker_params(params)}))
    if _existing_phantom(out_dir, wanted):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        training = partial / "training"
        training.mkdir()
        for index in range(subjects):
            group = _group_of(index, subjects)
            _write_subject(training, index, group, params, _subject_rng(seed, variant, index))
        (partial / MARKER).write_text(json.dumps(wanted, indent=1), encoding="utf-8")
        os.chmod(partial, 0o755)  # mkdtemp creates 0o700
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        try:
            os.rename(partial, out_dir)
        except OSError:
            if not _existing_phantom(out_dir, wanted):  # a concurrent run did not finish it
                raise
            shutil.rmtree(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out_dir

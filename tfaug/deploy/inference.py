"""Segment NIfTI volumes and DICOM series with an exported segmenter (ONNX Runtime or a
SavedModel).

For every input volume, as ``tfaug/analysis/evaluation.py`` does for the test set:

1. read the NIfTI with nibabel (one channel of a 4D file with ``channel``), or the DICOM
   series with SimpleITK (:mod:`tfaug.data.dicom`);
2. bring a volume stored in another voxel order than the training volumes (axis codes
   recorded in ``export.json``; flips and a swap of the in-plane axes, never the slice axis)
   to theirs (:func:`orientation_transform`), then apply the training preprocessing recorded
   in ``export.json`` (N4 if it was used, percentile normalisation, in-plane resampling to the
   training spacing, centre crop/pad), with the ``--set preprocess.KEY=VALUE`` changes
   inference allows (:mod:`tfaug.data.preprocess_overrides`);
3. predict the softmax slice by slice, in batches;
4. map the probabilities back onto the native grid (un-crop, linear resampling, the inverse
   reorientation) and take the argmax there;
5. write a uint8 label NIfTI with the input's affine and header, or the series' geometry (and
   optionally the native probabilities as a float32 (X,Y,Z,C) NIfTI), under a temporary
   name renamed at the end, so no half-written output is ever left.

A folder is segmented volume by volume: a volume that fails is named in the
:class:`~tfaug.data.inputs.SegmentReport` with its reason and the others go on; outputs
that already exist are skipped unless ``overwrite`` (so an interrupted run resumes).

A predictor is anything with ``size``, ``n_classes`` and ``predict(images (N,S,S,1)) ->
probabilities (N,S,S,C)``: :class:`OnnxPredictor`, :class:`SavedModelPredictor`, or the TF
Serving client of ``export/serving_client.py``. Nothing here trains, evaluates or exports.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation
from tqdm.auto import tqdm

from tfaug.config import ConfigError, config_from_dict
from tfaug.data.dicom import read_series
from tfaug.data.inputs import SegmentInput, SegmentReport, nifti_stem, plan_outputs
from tfaug.data.nifti import in_mm, load_nifti, read_header, save_nifti_atomic, spatial_shape
from tfaug.data.preprocess import SliceGeometry, preprocess_volume, restore_probabilities
from tfaug.data.preprocess_overrides import override_preprocess
from tfaug.data.volume import DatasetError, Volume
from tfaug.deploy.export import ExportError, find_export_json, read_export_json
from tfaug.deploy.orientation import inverse_orientation, orientation_transform, reorient_input

PROBABILITIES_SUFFIX = "_probabilities"


class Predictor(Protocol):
    """Maps normalised slices to class probabilities.

    Attributes:
        size: S, the square input side in pixels the model expects.
        n_classes: C.
    """

    size: int
    n_classes: int

    def predict(self, images: np.ndarray) -> np.ndarray:
        """float32 (N,S,S,1) normalised slices → float32 (N,S,S,C) probabilities."""
        ...


class OnnxPredictor:
    """An exported ``segmenter.onnx`` run by ONNX Runtime on the CPU.

    Raises:
        ExportError: ONNX Runtime cannot load the file (truncated or damaged), or the graph
            has no ``image`` input or ``probabilities`` output.
    """

    def __init__(self, path: str | Path) -> None:
        import onnxruntime

        self.path = Path(path)
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.path), providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime's errors (InvalidProtobuf, ...) are bare
            raise unloadable_model(self.path, "ONNX model", error) from error
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        _check_segmenter_io(self.path, inputs, outputs)
        self.size = int(inputs["image"][1])
        self.n_classes = int(outputs["probabilities"][-1])

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(["probabilities"], {"image": _as_batch(images)})[0]


class SavedModelPredictor:
    """An exported segmenter SavedModel (``DIR/segmenter/1``), signature ``serving_default``.

    Raises:
        ExportError: TensorFlow cannot load the folder (a missing or damaged file, e.g.
            ``variables/variables.index``), or it has no ``serving_default`` signature with
            ``image`` input and ``probabilities`` output.
    """

    def __init__(self, path: str | Path) -> None:
        import tensorflow as tf

        self.path = Path(path)
        try:
            signatures = tf.saved_model.load(str(self.path)).signatures
        except Exception as error:  # RuntimeError, tf.errors.*, DecodeError, ...
            raise unloadable_model(self.path, "SavedModel", error) from error
        if "serving_default" not in signatures:
            raise ExportError(
                f"{self.path}: SavedModel without a serving_default signature; pass the "
                "segmenter folder written by 'tfaug export'"
            )
        self.signature = signatures["serving_default"]
        specs = self.signature.structured_input_signature[1]
        inputs = {name: spec.shape.as_list() for name, spec in specs.items()}
        outputs = {k: s.shape.as_list() for k, s in self.signature.structured_outputs.items()}
        _check_segmenter_io(self.path, inputs, outputs)
        self.size = int(inputs["image"][1])
        self.n_classes = int(outputs["probabilities"][-1])

    def predict(self, images: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        return self.signature(image=tf.constant(_as_batch(images)))["probabilities"].numpy()


def unloadable_model(path: Path, what: str, error: Exception) -> ExportError:
    """The error for an exported model its runtime cannot load: the file, the runtime's
    reason (its first line) and the fix."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else "no message"
    return ExportError(
        f"{path}: the {what} cannot be loaded ({type(error).__name__}: {reason}); the export is "
        "incomplete or damaged (a file missing or cut short). Export the run again with "
        "'tfaug export RUN_DIR --out DIR' and pass the new model"
    )


def _as_batch(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images, dtype=np.float32)


def _check_segmenter_io(path: Path, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
    if "image" not in inputs or "probabilities" not in outputs:
        raise ExportError(
            f"{path}: expected a segmenter with input 'image' and output 'probabilities', found "
            f"inputs {sorted(inputs)} and outputs {sorted(outputs)}; pass DIR/segmenter.onnx or "
            "DIR/segmenter/1 of a 'tfaug export' folder"
        )


def _savedmodel_folder(path: Path) -> Path:
    """``DIR/segmenter/1`` for ``DIR``, ``DIR/segmenter`` or the version folder itself."""
    for candidate in (path, path / "1", path / "segmenter" / "1"):
        if (candidate / "saved_model.pb").is_file():
            return candidate
    raise ExportError(
        f"{path}: no SavedModel found (looked for saved_model.pb in {path}, {path / '1'} and "
        f"{path / 'segmenter' / '1'}); pass DIR/segmenter.onnx or DIR/segmenter of an export"
    )


def load_predictor(model: str | Path) -> tuple[Predictor, dict[str, Any]]:
    """Open an exported segmenter and its ``export.json``, and check they agree.

    Args:
        model: ``DIR/segmenter.onnx`` (ONNX Runtime), or ``DIR``, ``DIR/segmenter`` or
            ``DIR/segmenter/1`` (SavedModel in TensorFlow).

    Returns:
        ``(predictor, manifest)``, the manifest being the parsed export.json.

    Raises:
        ExportError: the model or export.json is missing, export.json does not list the
            model (:func:`check_listed`), the model cannot be loaded, its input size or class
            count differs from export.json's, or export.json changed while it was loaded (an
            export replaced the folder).
    """
    path = Path(model)
    if not path.exists():
        raise ExportError(f"{path}: model not found; pass DIR/segmenter.onnx or DIR/segmenter")
    manifest_path = find_export_json(path)
    manifest = read_export_json(manifest_path)
    if path.is_file() and path.suffix.lower() == ".onnx":
        check_listed(path, "onnx", manifest, manifest_path)
        predictor: Predictor = OnnxPredictor(path)
    else:
        folder = _savedmodel_folder(path)
        check_listed(folder, "savedmodel", manifest, manifest_path)
        predictor = SavedModelPredictor(folder)
    check_predictor(predictor, manifest, manifest_path)
    if not manifest_path.is_file() or read_export_json(manifest_path) != manifest:
        raise ExportError(
            f"{manifest_path}: changed while the model was loaded (an export replaced "
            f"{manifest_path.parent}); run the command again"
        )
    return predictor, manifest


def check_listed(model: Path, fmt: str, manifest: dict[str, Any], manifest_path: Path) -> None:
    """Raise an :class:`ExportError` unless export.json lists ``model`` as its segmenter in
    format ``fmt`` (``"onnx"`` or ``"savedmodel"``): a model it does not list (left by an
    export in another format, or copied in) was not made with this preprocessing."""
    entry = manifest["models"].get("segmenter") or {}
    folder = manifest_path.parent
    if fmt in entry and (folder / entry[fmt]).resolve() == model.resolve():
        return
    listed = [str(folder / entry[key]) for key in ("onnx", "savedmodel") if key in entry]
    raise ExportError(
        f"{model}: {manifest_path} does not list this model (it lists "
        f"{' and '.join(listed) or 'no segmenter'}), so it does not belong to that export; "
        "pass a model export.json lists, or export the run again with 'tfaug export'"
    )


def check_predictor(predictor: Predictor, manifest: dict[str, Any], where: Path | str) -> None:
    """Raise an :class:`ExportError` if the model's size or classes differ from export.json's."""
    size = int(manifest["preprocess"]["crop_size"])
    n_classes = len(manifest["data"]["class_names"])
    if predictor.size != size or predictor.n_classes != n_classes:
        raise ExportError(
            f"{where}: the model takes {predictor.size}x{predictor.size} slices and predicts "
            f"{predictor.n_classes} classes, but this export.json expects {size}x{size} slices "
            f"and {n_classes} classes; use the model exported with this export.json "
            "(the same 'tfaug export' folder)"
        )


def read_image(path: str | Path, channel: int | None = None) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read a 3D image, or one channel of a 4D one, as float32 (X, Y, Z).

    A file of shape (X, Y, Z, 1) (a length-1 axis after the third) is read as 3D, with or
    without ``channel`` 0. A vector image as ITK writes it, (X, Y, Z, 1, C), is read as the
    4D (X, Y, Z, C) (:func:`~tfaug.data.nifti.spatial_shape`).

    Returns:
        ``(image, nifti)``: the voxels and the opened file (its affine, header and zooms, in
        the file's own spatial unit: :func:`~tfaug.data.nifti.in_mm` gives them in mm).

    Raises:
        DatasetError: a missing or unreadable file, a 4D file without ``channel``, a channel on
            a 3D file, or an image that is not 3D or 4D (a 2D slice is named with the fix).
    """
    path = Path(path)
    stored, _, _ = read_header(path)
    shape = spatial_shape(stored)
    if len(shape) == 4 and channel is None:
        stored_as = f" (stored as {stored})" if stored != shape else ""
        raise DatasetError(
            f"{path}: expected a 3D image (X, Y, Z), found a 4D image of shape {shape}"
            f"{stored_as}; choose the channel the model was trained on with --channel (0 to "
            f"{shape[3] - 1}; export.json 'data.modality' names it)"
        )
    if len(stored) <= 3 and channel is not None:
        raise DatasetError(
            f"{path}: --channel {channel} given but the image is {len(shape)}D with shape "
            f"{shape}; channels exist only in 4D (X, Y, Z, C) images, drop --channel"
        )
    if len(shape) == 2:
        raise DatasetError(
            f"{path}: expected a 3D (X, Y, Z) or 4D (X, Y, Z, C) image, found shape {shape}, "
            "one 2D slice; save it as a volume of one slice, shape (X, Y, 1), with the same "
            "affine (nibabel: nib.Nifti1Image(image.get_fdata()[..., None], image.affine)) "
            "and segment that"
        )
    if len(shape) not in (3, 4):
        raise DatasetError(
            f"{path}: expected a 3D (X, Y, Z) or 4D (X, Y, Z, C) image, found shape {shape}"
        )
    data, _, _ = load_nifti(path, what="image", channel=channel)
    return data.astype(np.float32), nib.load(path)


def preprocess_image(
    image: np.ndarray, nifti: nib.Nifti1Image, manifest: dict[str, Any], name: str = "image"
) -> tuple[np.ndarray, SliceGeometry]:
    """Training preprocessing of one volume as recorded in export.json.

    Args:
        image: float32 (X, Y, Z) in scanner units.
        nifti: the opened file; its zooms give the spacing, read in mm whatever the
            header's spatial unit (:func:`~tfaug.data.nifti.in_mm`).
        manifest: the parsed export.json.
        name: what to call the volume in error messages (its path).

    Returns:
        ``(slices, geometry)``: float32 (Z,S,S,1) normalised slices and the geometry to map
        predictions back.

    Raises:
        ExportError: export.json's preprocess section is malformed.
        DatasetError: the image cannot be preprocessed (see ``preprocess_volume``).
    """
    try:
        preprocess = config_from_dict({"preprocess": manifest["preprocess"]}).preprocess
    except ConfigError as error:
        raise ExportError(f"export.json: bad preprocess section ({error})") from error
    nifti = in_mm(nifti)
    spacing = tuple(float(z) for z in nifti.header.get_zooms()[:3])
    volume = Volume(
        case_id=Path(name).name,
        image=image,
        label=None,
        spacing=spacing,
        affine=nifti.affine,
        meta={"image_path": name},
    )
    processed = preprocess_volume(volume, preprocess)
    return processed.image[..., None], processed.geometry


def predict_slices(predictor: Predictor, slices: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """float32 (Z,S,S,1) → probabilities float32 (Z,S,S,C), ``batch_size`` slices at a time."""
    if batch_size < 1:
        raise ValueError(f"predict_slices: batch_size must be >= 1, found {batch_size}")
    return np.concatenate(
        [
            predictor.predict(slices[begin : begin + batch_size])
            for begin in range(0, len(slices), batch_size)
        ],
        axis=0,
    )


def segment_image(
    predictor: Predictor,
    manifest: dict[str, Any],
    image: np.ndarray,
    nifti: nib.Nifti1Image,
    batch_size: int = 16,
    name: str = "image",
) -> tuple[np.ndarray, np.ndarray]:
    """Segment one volume: reorient to the training voxel order if export.json asks for it
    (:func:`orientation_transform`), preprocess, predict, map back to the native grid and the
    input's voxel order, argmax. ``nifti``'s geometry is read in mm whatever its header's
    spatial unit (:func:`~tfaug.data.nifti.in_mm`).

    Returns:
        ``(labels, probabilities)``: uint8 (X, Y, Z) class indices and float32 (X, Y, Z, C)
        probabilities, both on the input's voxel grid.
    """
    nifti = in_mm(nifti)
    transform = orientation_transform(nifti.affine, manifest, name)
    if transform is not None:
        image, nifti = reorient_input(image, nifti, transform)
    slices, geometry = preprocess_image(image, nifti, manifest, name)
    probabilities = restore_probabilities(predict_slices(predictor, slices, batch_size), geometry)
    if transform is not None:
        restored = apply_orientation(probabilities, inverse_orientation(transform))
        probabilities = np.ascontiguousarray(restored)
    return probabilities.argmax(axis=-1).astype(np.uint8), probabilities


def write_like(data: np.ndarray, reference: nib.Nifti1Image, path: Path) -> None:
    """Write ``data`` as NIfTI with ``reference``'s affine and header, in ``data``'s dtype.

    Pass the input file as read (:func:`read_image`), not its :func:`~tfaug.data.nifti.in_mm`
    view: the output then keeps the input's spatial unit (metres, say) and affine, and lies
    on it in any viewer, whether or not the viewer converts units.

    The header's intensity scaling is reset (slope 1, intercept 0), its display range
    (``cal_min``, ``cal_max``) set to ``data``'s, so viewers do not show the labels with the
    scan's window (nearly black), and its intent set to ``label`` for integer data (class
    indices) and cleared otherwise; its shape follows ``data``. The file appears complete or
    not at all (:func:`~tfaug.data.nifti.save_nifti_atomic`).
    """
    header = reference.header.copy()
    image = nib.Nifti1Image(data, reference.affine, header)
    image.set_data_dtype(data.dtype)
    image.header.set_slope_inter(1.0, 0.0)
    image.header["cal_min"], image.header["cal_max"] = float(data.min()), float(data.max())
    image.header.set_intent("label" if data.dtype.kind in "iub" else "none")
    save_nifti_atomic(image, path)


def probabilities_path(label_path: Path) -> Path:
    """``case.nii.gz`` → ``case_probabilities.nii.gz`` beside it."""
    return label_path.with_name(nifti_stem(label_path.name) + PROBABILITIES_SUFFIX + ".nii.gz")


def segment_file(
    predictor: Predictor,
    manifest: dict[str, Any],
    input_path: str | Path,
    output_path: str | Path,
    *,
    channel: int | None = None,
    batch_size: int = 16,
    save_probabilities: bool = False,
) -> Path:
    """Segment one NIfTI file into a uint8 label NIfTI (and optionally probabilities).

    Returns:
        The label file written (``output_path``).

    Raises:
        DatasetError: an unreadable input, a 4D input without ``channel``, or an
            ``output_path`` that is the input file.
    """
    source = SegmentInput(Path(input_path))
    return segment_input(
        predictor,
        manifest,
        source,
        Path(output_path),
        channel=channel,
        batch_size=batch_size,
        save_probabilities=save_probabilities,
    )


def read_input(
    item: SegmentInput, channel: int | None = None
) -> tuple[np.ndarray, nib.Nifti1Image]:
    """float32 (X, Y, Z) voxels and the NIfTI image whose affine and header the outputs get.

    Raises:
        DatasetError: the input's listing ``problem``, ``channel`` with a DICOM series, or any
            reading problem (:func:`read_image`, :func:`tfaug.data.dicom.read_series`).
    """
    if item.problem is not None:
        raise DatasetError(item.problem)
    if item.series_uid is None:
        return read_image(item.source, channel)
    if channel is not None:
        raise DatasetError(
            f"{item.label}: --channel {channel} given but a DICOM series is one 3D volume; "
            "drop --channel (or segment the 4D NIfTI files and the series separately)"
        )
    image, nifti, _ = read_series(item.source, item.series_uid)
    return image, nifti


def segment_input(
    predictor: Predictor,
    manifest: dict[str, Any],
    item: SegmentInput,
    output_path: Path,
    *,
    channel: int | None = None,
    batch_size: int = 16,
    save_probabilities: bool = False,
) -> Path:
    """Segment one NIfTI file or DICOM series into a uint8 label NIfTI on its grid.

    The probabilities (if asked) are written before the labels, so an existing label file
    means a complete output.

    Returns:
        ``output_path``.

    Raises:
        DatasetError: an ``output_path`` that is the input file, or see :func:`read_input`
            and :func:`preprocess_image`.
    """
    if output_path.resolve() == item.source.resolve():
        raise DatasetError(
            f"{output_path}: the output would overwrite the input image; choose another -o"
        )
    image, nifti = read_input(item, channel)
    labels, probabilities = segment_image(predictor, manifest, image, nifti, batch_size, item.label)
    if save_probabilities:
        write_like(probabilities, nifti, probabilities_path(output_path))
    write_like(labels, nifti, output_path)
    return output_path


def _finished(item: SegmentInput, label_path: Path, save_probabilities: bool) -> bool:
    """True if every file a run would write for ``item`` is already there (and is not the
    input itself, which :func:`segment_input` refuses)."""
    wanted = [label_path, probabilities_path(label_path)] if save_probabilities else [label_path]
    return (
        item.problem is None
        and label_path.resolve() != item.source.resolve()
        and all(path.is_file() for path in wanted)
    )


def _reason(error: Exception) -> str:
    """The message of a failed input: tfaug's own errors as they are, others with their type."""
    if isinstance(error, ValueError) and str(error):
        return str(error)
    return f"{type(error).__name__}: {error}"


def segment_inputs(
    input_path: str | Path,
    output: str | Path,
    model: str | Path,
    *,
    channel: int | None = None,
    batch_size: int = 16,
    save_probabilities: bool = False,
    overwrite: bool = False,
    preprocess_overrides: Sequence[str] = (),
    progress: bool = True,
) -> SegmentReport:
    """Segment a NIfTI file, a DICOM series folder, or every volume of a folder (``tfaug
    segment``), and report what became of each.

    Args:
        input_path: a ``.nii``/``.nii.gz`` file, or a folder of NIfTI files and DICOM series
            (:func:`tfaug.data.inputs.find_inputs`).
        output: a label file name (for one volume) or a folder.
        model: ``DIR/segmenter.onnx`` or the SavedModel folder (see :func:`load_predictor`).
        channel: channel of 4D NIfTI inputs (required for them).
        batch_size: slices per forward pass.
        save_probabilities: also write ``<name>_probabilities.nii.gz`` float32 (X,Y,Z,C).
        overwrite: segment inputs whose outputs exist again (default: skip them).
        preprocess_overrides: ``preprocess.KEY=VALUE`` changes to export.json's preprocessing
            (:mod:`tfaug.data.preprocess_overrides`).
        progress: a progress bar over the volumes (folders only).

    Returns:
        The :class:`SegmentReport`. For a folder, a volume that cannot be segmented is listed
        in ``failed`` with its reason and the others go on.

    Raises:
        ExportError: see :func:`load_predictor`.
        ConfigError: a refused ``preprocess_overrides`` entry.
        DatasetError: a missing input or an empty folder; for a file input, any problem of
            that file.
    """
    input_path = Path(input_path)
    pairs = plan_outputs(input_path, Path(output))
    predictor, manifest = load_predictor(model)
    manifest = override_preprocess(manifest, preprocess_overrides)
    folder = input_path.is_dir()
    report = SegmentReport()
    for item, target in tqdm(
        pairs, desc="segment", unit="volume", disable=not (progress and folder)
    ):
        if not overwrite and _finished(item, target, save_probabilities):
            report.skipped.append((item, target))
            continue
        try:
            segment_input(
                predictor,
                manifest,
                item,
                target,
                channel=channel,
                batch_size=batch_size,
                save_probabilities=save_probabilities,
            )
        except Exception as error:  # one bad volume must not stop a folder
            if not folder:
                raise
            report.failed.append((item, _reason(error)))
        else:
            report.written.append((item, target))
    return report


def segment(
    input_path: str | Path, output: str | Path, model: str | Path, **options: Any
) -> list[Path]:
    """:func:`segment_inputs` (same arguments), returning the label files; raises if any
    volume failed.

    Returns:
        The label files written now, then those already there, each in input order.

    Raises:
        DatasetError: as :func:`segment_inputs`; and, for a folder, once every other volume is
            done, one error with the summary if any volume failed.
    """
    report = segment_inputs(input_path, output, model, **options)
    if report.failed:
        raise DatasetError(
            f"{input_path}: {len(report.failed)} volume(s) failed\n{report.summary()}"
        )
    return report.outputs

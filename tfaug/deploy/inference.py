"""Segment NIfTI volumes with an exported segmenter (ONNX Runtime or a SavedModel).

For every input volume, as ``tfaug/analysis/evaluation.py`` does for the test set:

1. read the NIfTI with nibabel (one channel of a 4D file with ``channel``);
2. apply the training preprocessing recorded in ``export.json`` (N4 if it was used,
   percentile normalisation, in-plane resampling to the training spacing, centre crop/pad);
3. predict the softmax slice by slice, in batches;
4. map the probabilities back onto the native grid (un-crop, linear resampling) and take the
   argmax there;
5. write a uint8 label NIfTI with the input's affine and header (and optionally the native
   probabilities as a float32 (X,Y,Z,C) NIfTI).

A predictor is anything with ``size``, ``n_classes`` and ``predict(images (N,S,S,1)) ->
probabilities (N,S,S,C)``: :class:`OnnxPredictor`, :class:`SavedModelPredictor`, or the TF
Serving client of ``export/serving_client.py``. Nothing here trains, evaluates or exports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from tfaug.config import ConfigError, config_from_dict
from tfaug.data.nifti import load_nifti, read_header
from tfaug.data.preprocess import SliceGeometry, preprocess_volume, restore_probabilities
from tfaug.data.volume import DatasetError, Volume
from tfaug.deploy.export import ExportError, find_export_json, read_export_json

NIFTI_SUFFIXES = (".nii.gz", ".nii")
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
        ExportError: the graph has no ``image`` input or ``probabilities`` output.
    """

    def __init__(self, path: str | Path) -> None:
        import onnxruntime

        self.path = Path(path)
        self.session = onnxruntime.InferenceSession(
            str(self.path), providers=["CPUExecutionProvider"]
        )
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
        ExportError: the folder has no ``serving_default`` signature with ``image`` input and
            ``probabilities`` output.
    """

    def __init__(self, path: str | Path) -> None:
        import tensorflow as tf

        self.path = Path(path)
        signatures = tf.saved_model.load(str(self.path)).signatures
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
        ExportError: the model or export.json is missing, or the model's input size or class
            count differs from export.json's.
    """
    path = Path(model)
    if not path.exists():
        raise ExportError(f"{path}: model not found; pass DIR/segmenter.onnx or DIR/segmenter")
    manifest_path = find_export_json(path)
    manifest = read_export_json(manifest_path)
    if path.is_file() and path.suffix == ".onnx":
        predictor: Predictor = OnnxPredictor(path)
    else:
        predictor = SavedModelPredictor(_savedmodel_folder(path))
    check_predictor(predictor, manifest, manifest_path)
    return predictor, manifest


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

    Returns:
        ``(image, nifti)``: the voxels and the opened file (its affine, header and zooms).

    Raises:
        DatasetError: a missing or unreadable file, a 4D file without ``channel``, a channel on
            a 3D file, or an image that is not 3D or 4D.
    """
    path = Path(path)
    shape, _, _ = read_header(path)
    if len(shape) == 4 and channel is None:
        raise DatasetError(
            f"{path}: expected a 3D image (X, Y, Z), found a 4D image of shape {shape}; choose "
            f"the channel the model was trained on with --channel (0 to {shape[3] - 1}; "
            "export.json 'data.modality' names it)"
        )
    if len(shape) != 4 and channel is not None:
        raise DatasetError(
            f"{path}: --channel {channel} given but the image is {len(shape)}D with shape "
            f"{shape}; channels exist only in 4D (X, Y, Z, C) images, drop --channel"
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
        nifti: the opened file (zooms give the spacing in mm).
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
    """Segment one volume: preprocess, predict, map back to the native grid, argmax.

    Returns:
        ``(labels, probabilities)``: uint8 (X, Y, Z) class indices and float32 (X, Y, Z, C)
        probabilities, both on the input's voxel grid.
    """
    slices, geometry = preprocess_image(image, nifti, manifest, name)
    probabilities = restore_probabilities(predict_slices(predictor, slices, batch_size), geometry)
    return probabilities.argmax(axis=-1).astype(np.uint8), probabilities


def write_like(data: np.ndarray, reference: nib.Nifti1Image, path: Path) -> None:
    """Write ``data`` as NIfTI with ``reference``'s affine and header, in ``data``'s dtype.

    The header's intensity scaling is reset (slope 1, intercept 0); its shape follows ``data``.
    """
    header = reference.header.copy()
    image = nib.Nifti1Image(data, reference.affine, header)
    image.set_data_dtype(data.dtype)
    image.header.set_slope_inter(1.0, 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))


def _strip_suffix(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def probabilities_path(label_path: Path) -> Path:
    """``case.nii.gz`` → ``case_probabilities.nii.gz`` beside it."""
    return label_path.with_name(_strip_suffix(label_path.name) + PROBABILITIES_SUFFIX + ".nii.gz")


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
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.resolve() == input_path.resolve():
        raise DatasetError(
            f"{output_path}: the output would overwrite the input image; choose another -o"
        )
    image, nifti = read_image(input_path, channel)
    labels, probabilities = segment_image(
        predictor, manifest, image, nifti, batch_size, str(input_path)
    )
    write_like(labels, nifti, output_path)
    if save_probabilities:
        write_like(probabilities, nifti, probabilities_path(output_path))
    return output_path


def list_inputs(folder: Path) -> list[Path]:
    """The NIfTI files of ``folder`` (not recursive), sorted; hidden ``._*`` files skipped.

    Raises:
        DatasetError: the folder holds no NIfTI file.
    """
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.endswith(NIFTI_SUFFIXES)
    )
    if not files:
        raise DatasetError(
            f"{folder}: no .nii or .nii.gz file found; pass a NIfTI file or a folder of them"
        )
    return files


def output_paths(input_path: Path, output: Path) -> list[tuple[Path, Path]]:
    """(input file, label file) pairs: a file → ``output`` (a .nii/.nii.gz name, else a folder
    receiving the input's file name); a folder → ``output/<same file name>`` for each file."""
    if input_path.is_dir():
        return [(path, output / path.name) for path in list_inputs(input_path)]
    if not input_path.is_file():
        raise DatasetError(f"{input_path}: input not found; pass a NIfTI file or a folder")
    if output.name.endswith(NIFTI_SUFFIXES):
        return [(input_path, output)]
    return [(input_path, output / input_path.name)]


def segment(
    input_path: str | Path,
    output: str | Path,
    model: str | Path,
    *,
    channel: int | None = None,
    batch_size: int = 16,
    save_probabilities: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Segment a NIfTI file or every NIfTI file of a folder (``tfaug segment``).

    Args:
        input_path: a ``.nii``/``.nii.gz`` file or a folder of them.
        output: a label file name (for a file input) or a folder.
        model: ``DIR/segmenter.onnx`` or the SavedModel folder (see :func:`load_predictor`).
        channel: channel of 4D inputs (required for them).
        batch_size: slices per forward pass.
        save_probabilities: also write ``<name>_probabilities.nii.gz`` float32 (X,Y,Z,C).
        progress: a progress bar over the files (folders only).

    Returns:
        The label files written, in input order.

    Raises:
        ExportError: see :func:`load_predictor`.
        DatasetError: a missing input, an empty folder, an unreadable or 4D file without
            ``channel``.
    """
    pairs = output_paths(Path(input_path), Path(output))
    predictor, manifest = load_predictor(model)
    show = progress and Path(input_path).is_dir()
    return [
        segment_file(
            predictor,
            manifest,
            source,
            target,
            channel=channel,
            batch_size=batch_size,
            save_probabilities=save_probabilities,
        )
        for source, target in tqdm(pairs, desc="segment", unit="volume", disable=not show)
    ]

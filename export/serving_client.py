"""Segment a NIfTI volume with a segmenter served by TF Serving (REST API).

Usage::

    python export/serving_client.py -i case.nii.gz -o case_seg.nii.gz --export DIR \\
        [--url http://localhost:8501] [--model-name segmenter] [--format instances|inputs] \\
        [--channel K] [--batch-size 16]

``DIR`` is the folder written by ``tfaug export`` (its export.json gives the preprocessing);
the server serves ``DIR/segmenter`` (see docs/export.md for the docker command). The volume
is preprocessed exactly as ``tfaug segment`` does it, sent in batches of slices to
``POST {url}/v1/models/{model_name}:predict``, and the probabilities are mapped back to the
input grid; the label NIfTI (uint8) keeps the input's affine and header.

Request formats (TF Serving's REST API), signature ``serving_default``:

- ``instances`` (row format): ``{"signature_name": ..., "instances": [{"image": S×S×1}, ...]}``
  → ``{"predictions": [{"probabilities": S×S×C, "labels": S×S}, ...]}``;
- ``inputs`` (columnar format): ``{"signature_name": ..., "inputs": {"image": N×S×S×1}}``
  → ``{"outputs": {"probabilities": N×S×S×C, "labels": N×S×S}}``.
"""

from __future__ import annotations

from tfaug.console import setup_console

setup_console()  # TensorFlow's start-up lines stay quiet: before tfaug.deploy.inference imports it

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from tfaug.deploy.export import EXPORT_JSON, ExportError, read_export_json
from tfaug.deploy.inference import segment_file

REQUEST_FORMATS = ("instances", "inputs")
SIGNATURE = "serving_default"


class ServingError(RuntimeError):
    """The server could not be reached or answered with an error."""


def predict_url(url: str, model_name: str = "segmenter") -> str:
    """``{url}/v1/models/{model_name}:predict`` (TF Serving's REST predict endpoint)."""
    return f"{url.rstrip('/')}/v1/models/{model_name}:predict"


def build_request(images: np.ndarray, request_format: str = "instances") -> dict[str, Any]:
    """The JSON body of a predict request for float32 (N,S,S,1) normalised slices.

    Raises:
        ValueError: an unknown format or images that are not (N,S,S,1).
    """
    if request_format not in REQUEST_FORMATS:
        raise ValueError(
            f"build_request: format must be one of {REQUEST_FORMATS}, found {request_format!r}"
        )
    array = np.asarray(images, dtype=np.float32)
    if array.ndim != 4 or array.shape[-1] != 1:
        raise ValueError(f"build_request: expected images (N,S,S,1), found shape {array.shape}")
    if request_format == "instances":
        return {"signature_name": SIGNATURE, "instances": [{"image": x.tolist()} for x in array]}
    return {"signature_name": SIGNATURE, "inputs": {"image": array.tolist()}}


def parse_response(response: dict[str, Any], request_format: str = "instances") -> np.ndarray:
    """float32 (N,S,S,C) probabilities from a predict response of ``request_format``.

    Raises:
        ServingError: the response reports an error or lacks the probabilities.
    """
    if "error" in response:
        raise ServingError(f"TF Serving answered with an error: {response['error']}")
    try:
        if request_format == "instances":
            rows = [row["probabilities"] for row in response["predictions"]]
        else:
            rows = response["outputs"]["probabilities"]
    except (KeyError, TypeError) as error:
        raise ServingError(
            f"unexpected predict response for the {request_format!r} format (missing {error}); "
            "is the server serving the segmenter exported by 'tfaug export'?"
        ) from error
    return np.asarray(rows, dtype=np.float32)


class ServingPredictor:
    """A :class:`tfaug.deploy.inference.Predictor` that asks TF Serving over REST.

    Args:
        url: the server, e.g. ``http://localhost:8501``.
        manifest: the parsed export.json of the served model (size and classes).
        model_name: the served model's name (``--model_name`` of tensorflow_model_server).
        request_format: ``"instances"`` or ``"inputs"``.
        timeout_s: seconds to wait for each response.
    """

    def __init__(
        self,
        url: str,
        manifest: dict[str, Any],
        model_name: str = "segmenter",
        request_format: str = "instances",
        timeout_s: float = 60.0,
    ) -> None:
        self.endpoint = predict_url(url, model_name)
        self.request_format = request_format
        self.timeout_s = timeout_s
        self.size = int(manifest["input"]["size"])
        self.n_classes = len(manifest["data"]["class_names"])

    def predict(self, images: np.ndarray) -> np.ndarray:
        body = json.dumps(build_request(images, self.request_format)).encode("utf-8")
        request = urllib.request.Request(
            self.endpoint, data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                response = json.loads(answer.read().decode("utf-8"))
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", "replace")
            raise ServingError(f"{self.endpoint}: HTTP {error.code}: {detail}") from error
        except urllib.error.URLError as error:
            raise ServingError(
                f"{self.endpoint}: cannot reach TF Serving ({error.reason}); start it with the "
                "docker command of docs/export.md or pass --url"
            ) from error
        probabilities = parse_response(response, self.request_format)
        if probabilities.shape != (*images.shape[:3], self.n_classes):
            raise ServingError(
                f"{self.endpoint}: expected probabilities of shape "
                f"{(*images.shape[:3], self.n_classes)}, found {probabilities.shape}; the "
                "served model is not the one of this export.json"
            )
        return probabilities


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, segment one volume through TF Serving; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--input", type=Path, required=True, help="NIfTI volume")
    parser.add_argument("-o", "--output", type=Path, required=True, help="label NIfTI to write")
    parser.add_argument("--export", type=Path, required=True, help="the 'tfaug export' folder")
    parser.add_argument("--url", default="http://localhost:8501", help="TF Serving REST address")
    parser.add_argument("--model-name", default="segmenter", help="served model name")
    parser.add_argument("--format", choices=REQUEST_FORMATS, default="instances")
    parser.add_argument("--channel", type=int, default=None, help="channel of a 4D input")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per request")
    args = parser.parse_args(argv)
    try:
        manifest = read_export_json(args.export / EXPORT_JSON)
        predictor = ServingPredictor(args.url, manifest, args.model_name, args.format)
        segment_file(
            predictor,
            manifest,
            args.input,
            args.output,
            channel=args.channel,
            batch_size=args.batch_size,
        )
    except (ExportError, ServingError, ValueError) as error:
        print(f"serving_client: error: {error}", file=sys.stderr)
        return 2
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

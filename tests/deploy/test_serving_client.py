"""The TF Serving client's REST contract, checked against the exported SavedModel.

No TF Serving binary runs here: the requests the client builds are decoded the way TF
Serving's REST API decodes them (row ``instances`` or columnar ``inputs``) and fed to the
exported ``serving_default`` signature loaded with TensorFlow; the response is encoded the
same way. A small local HTTP server does this so the client runs end to end.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf
from deploy_run import phantom_slices

from tfaug.data.datasets import list_cases
from tfaug.data.records import resolve_data_root
from tfaug.deploy.inference import segment

CLIENT = Path(__file__).resolve().parents[2] / "export" / "serving_client.py"


def test_image(finished_run) -> Path:
    """The image file of the run's first test volume."""
    _, cfg, _, split = finished_run
    refs = {ref.case_id: ref for ref in list_cases(cfg.data, resolve_data_root(cfg))}
    return refs[split.test[0]].image_path


@pytest.fixture(scope="module")
def client():
    spec = importlib.util.spec_from_file_location("serving_client", CLIENT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def signature(export_dir):
    return tf.saved_model.load(str(export_dir / "segmenter/1")).signatures["serving_default"]


def serve_like_tf_serving(signature, body: dict) -> dict:
    """Decode a predict body as TF Serving's REST API does, run the signature, encode."""
    specs = signature.structured_input_signature[1]
    if body.get("signature_name", "serving_default") != "serving_default":
        return {"error": f"Serving signature name: {body['signature_name']} not found"}
    if "instances" in body:
        rows = body["instances"]
        named = {name: [row[name] for row in rows] for name in specs}
    else:
        named = body["inputs"]
    if set(named) != set(specs):
        return {"error": f"inputs {sorted(named)} do not match {sorted(specs)}"}
    tensors = {}
    for name, spec in specs.items():
        value = tf.constant(np.asarray(named[name]), dtype=spec.dtype)
        if not spec.shape.is_compatible_with(value.shape):
            return {"error": f"input {name}: shape {value.shape} vs signature {spec.shape}"}
        tensors[name] = value
    outputs = {k: v.numpy().tolist() for k, v in signature(**tensors).items()}
    if "instances" in body:
        count = len(body["instances"])
        return {"predictions": [{k: v[i] for k, v in outputs.items()} for i in range(count)]}
    return {"outputs": outputs}


@pytest.mark.parametrize("request_format", ["instances", "inputs"])
def test_request_json_matches_the_savedmodel_signature(
    client,
    signature,
    finished_run,
    request_format,
):
    images, _ = phantom_slices(finished_run, count=3)
    body = json.loads(json.dumps(client.build_request(images, request_format)))
    response = json.loads(json.dumps(serve_like_tf_serving(signature, body)))
    assert "error" not in response
    probabilities = client.parse_response(response, request_format)
    expected = signature(image=tf.constant(images))["probabilities"].numpy()
    assert probabilities.shape == (3, 32, 32, 4)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)


def test_build_request_rejects_images_without_the_channel_axis(client):
    with pytest.raises(ValueError, match=r"expected images \(N,S,S,1\)"):
        client.build_request(np.zeros((2, 32, 32), np.float32))


def test_parse_response_reports_server_errors(client):
    with pytest.raises(client.ServingError, match="not found"):
        client.parse_response({"error": "Servable not found for request"})
    with pytest.raises(client.ServingError, match="missing 'outputs'"):
        client.parse_response({"predictions": []}, "inputs")


class _Handler(BaseHTTPRequestHandler):
    signature = None

    def do_POST(self):  # noqa: N802 (http.server's naming)
        assert self.path == "/v1/models/segmenter:predict"
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        answer = json.dumps(serve_like_tf_serving(type(self).signature, body)).encode()
        self.send_response(400 if b'"error"' in answer else 200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server(signature):
    handler = type("Handler", (_Handler,), {"signature": signature})
    httpd = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("request_format", ["instances", "inputs"])
def test_client_writes_the_same_labels_as_local_inference(
    client,
    server,
    export_dir,
    finished_run,
    tmp_path,
    request_format,
):
    image_path = test_image(finished_run)
    out = tmp_path / "served.nii.gz"
    argv = ["-i", str(image_path), "-o", str(out), "--export", str(export_dir)]
    argv += ["--url", server, "--format", request_format, "--batch-size", "4"]
    assert client.main(argv) == 0
    (local,) = segment(image_path, tmp_path / "local.nii.gz", export_dir / "segmenter")
    served = nib.load(out)
    assert served.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(served.affine, nib.load(image_path).affine)
    np.testing.assert_array_equal(np.asarray(served.dataobj), np.asarray(nib.load(local).dataobj))


def test_client_reports_an_unreachable_server(client, export_dir, finished_run, tmp_path, capsys):
    argv = [
        "-i",
        str(test_image(finished_run)),
        "-o",
        str(tmp_path / "x.nii.gz"),
        "--export",
        str(export_dir),
    ]
    assert client.main([*argv, "--url", "http://127.0.0.1:9"]) == 2
    assert "cannot reach TF Serving" in capsys.readouterr().err

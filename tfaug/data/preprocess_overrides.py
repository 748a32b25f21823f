"""``tfaug segment --set preprocess.KEY=VALUE``: the preprocessing keys inference may change.

``tfaug segment`` preprocesses every volume as ``export.json`` says the model's training data
was. Only the keys of :data:`INFERENCE_KEYS` may differ at inference: they decide whether and
how N4 removes a bias field (e.g. ``n4=false`` for a volume N4 cannot handle, or fewer
iterations for speed), and N4 leaves the intensity scale to the percentile normalisation that
follows. The others define the input the network learned on (``spacing_mm`` its physical
scale, ``crop_size`` its input size, ``percentiles`` its intensity scale) and are refused.
Each change is reported with a :class:`~tfaug.data.volume.DatasetWarning`.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Sequence
from typing import Any

from tfaug.config import ConfigError, PreprocessConfig, config_from_dict, parse_override
from tfaug.data.volume import DatasetWarning

INFERENCE_KEYS = ("n4", "n4_shrink", "n4_iterations", "n4_negatives")


def _one_key(text: str) -> tuple[str, Any]:
    """``"preprocess.n4=false"`` → ``("n4", False)`` (the value parsed as YAML).

    Raises:
        ConfigError: not ``preprocess.KEY=VALUE``, an unknown key, or a key outside
            :data:`INFERENCE_KEYS`.
    """
    allowed = ", ".join(f"preprocess.{key}" for key in INFERENCE_KEYS)
    nested = parse_override(text)
    section = nested.get("preprocess")
    if set(nested) != {"preprocess"} or not isinstance(section, dict) or len(section) != 1:
        raise ConfigError(
            f"--set {text!r}: tfaug segment takes only preprocess.KEY=VALUE, one key each, "
            f"for the keys {allowed}"
        )
    ((key, value),) = section.items()
    known = {f.name for f in dataclasses.fields(PreprocessConfig)}
    if key not in known:
        raise ConfigError(
            f"--set {text!r}: unknown preprocessing key {key!r}; the keys inference may change "
            f"are {allowed}"
        )
    if key not in INFERENCE_KEYS:
        raise ConfigError(
            f"--set {text!r}: preprocess.{key} cannot change at inference: the model learned on "
            f"inputs made with the export's value (spacing, crop size and percentiles define "
            f"the network's input); the keys inference may change are {allowed}"
        )
    return key, value


def override_preprocess(manifest: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """export.json's manifest with ``--set preprocess.KEY=VALUE`` applied to its preprocessing.

    Args:
        manifest: the parsed export.json (not modified).
        overrides: ``preprocess.KEY=VALUE`` strings, keys from :data:`INFERENCE_KEYS`.

    Returns:
        A copy of ``manifest`` whose ``preprocess`` is complete (defaults filled in for keys an
        older export lacks) and overridden. A :class:`DatasetWarning` names every value that
        differs from the one the model was trained with.

    Raises:
        ConfigError: see :func:`_one_key`; or a value of the wrong type or choice.
    """
    trained = dataclasses.asdict(
        config_from_dict({"preprocess": manifest["preprocess"]}).preprocess
    )
    changed = dict(_one_key(text) for text in overrides)
    preprocess = dataclasses.asdict(
        config_from_dict({"preprocess": {**trained, **changed}}).preprocess
    )
    for key in changed:
        if preprocess[key] != trained[key]:
            warnings.warn(
                f"the model was trained with preprocess.{key}={json.dumps(trained[key])}; "
                f"segmenting with preprocess.{key}={json.dumps(preprocess[key])} (--set)",
                DatasetWarning,
                stacklevel=2,
            )
    return {**manifest, "preprocess": preprocess}

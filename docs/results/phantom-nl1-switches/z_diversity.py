"""How much each trained generator's field depends on its noise z.

For every shared generator folder given, loads GV and GI at their chosen checkpoints, draws
16 z for each of 8 labeled slices of the run's own split, and prints, per generator, the mean
field size and ``field_diversity`` (``mean|f(x,z) − f(x,z')| / (mean|f(x,z)| + mean|f(x,z')|)``
over pairs of draws: 0 when G ignores z).

    python docs/results/phantom-nl1-switches/z_diversity.py runs/phantom-nl1-generators-*
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
import yaml

from tfaug.config import config_from_dict
from tfaug.data.pipeline import labeled_dataset
from tfaug.data.records import prepare_cache
from tfaug.runs.algorithm import plan_split
from tfaug.training.builders import build_generator
from tfaug.training.joint import field_diversity

DRAWS = 16


def main(folders: list[str]) -> None:
    for folder in map(Path, folders):
        cfg = config_from_dict(yaml.safe_load((folder / "config.yaml").read_text()))
        _, split = plan_split(cfg)
        cache = prepare_cache(cfg, progress=False)
        images, _ = next(iter(labeled_dataset(cache, split.labeled, 8, seed=0)))
        for kind in ("deformation", "intensity"):
            weights = folder / "checkpoints" / f"generator_{kind}" / "best" / "generator.weights.h5"
            if not weights.is_file():
                continue
            generator = build_generator(cfg, kind)
            generator.load_weights(weights)
            fields = [
                generator((images, tf.random.stateless_normal((8, cfg.model.z_dim), (d, 0))))
                for d in range(DRAWS)
            ]
            size = np.mean([float(tf.reduce_mean(tf.norm(f, axis=-1))) for f in fields])
            diversity = np.mean(
                [float(field_diversity(fields[i], fields[i + 1])) for i in range(DRAWS - 1)]
            )
            print(f"{folder.name:55s} {kind:12s} |field| {size:7.3f}  diversity {diversity:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""tfaug: semi-supervised, task-driven data augmentation for medical image segmentation.

TensorFlow 2 / Keras 3 implementation of Chaitanya et al., Medical Image Analysis 2021.
"""

from tfaug import source_guard  # noqa: F401  (stamps the package's files at first import)
from tfaug.version import __version__

__all__ = ["LearnedAugmentation", "__version__"]


def __getattr__(name: str):
    """``tfaug.LearnedAugmentation``, imported on first use (``import tfaug`` stays TF-free)."""
    if name == "LearnedAugmentation":
        from tfaug.deploy.augmenter import LearnedAugmentation

        return LearnedAugmentation
    raise AttributeError(f"module 'tfaug' has no attribute {name!r}")

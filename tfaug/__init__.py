"""tfaug: semi-supervised, task-driven data augmentation for medical image segmentation.

TensorFlow 2 / Keras 3 implementation of Chaitanya et al., Medical Image Analysis 2021.
"""

__version__ = "0.1.0"

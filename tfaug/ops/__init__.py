"""TensorFlow ops: the dense warp and the random augmentations."""

"""TensorFlow ops: the dense warp, the random augmentations and the learned ones."""

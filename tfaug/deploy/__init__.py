"""A trained run in use: export (SavedModel, ONNX), inference on volumes, the augmenter."""

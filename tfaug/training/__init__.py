"""The method and its engine: the joint (S, G, D) step, the segmenter step, the stage loop,
distribution, precision, and the builders that turn a config into these objects."""

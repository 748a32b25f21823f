"""Training: the joint (S, G, D) step, the segmenter stage and Algorithm 1."""

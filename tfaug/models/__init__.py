"""Keras 3 models: the U-Net segmenter, the generators and the discriminator."""

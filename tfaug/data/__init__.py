"""Datasets: readers, the phantom, preprocessing, splits, TFRecords and tf.data."""

"""Random seeds that differ between the replicas of a ``tf.distribute`` strategy."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

# Added to the first seed component per replica: far from any seed tfaug uses
# (seed · 1000 + stage), and below TensorFlow's int32 seed range after Keras' floormod.
_REPLICA_SEED_STRIDE = 1_073_741_789


def replica_id() -> tf.Tensor | int:
    """This replica's index in ``[0, num_replicas_in_sync)``; 0 on one device and in
    cross-replica context (a Python int there, a scalar int32 tensor inside
    ``strategy.run``)."""
    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context: the primary replica's view
        return 0
    return context.replica_id_in_sync_group


@keras.saving.register_keras_serializable(package="tfaug")
class ReplicaSeedGenerator(keras.random.SeedGenerator):
    """A ``keras.random.SeedGenerator`` whose seeds differ between replicas.

    Under a distribution strategy the generator's state is mirrored: every replica would
    draw the same numbers for its different rows (row i of every replica would get the same
    affine transform). This generator adds ``replica_id · 1_073_741_789`` to the first seed
    component of every draw. On one device (replica 0) it is exactly
    ``keras.random.SeedGenerator``; the state (and so checkpointing and resuming) is the same.
    """

    def next(self, ordered: bool = True) -> Any:
        seed = super().next(ordered=ordered)
        replica = replica_id()
        if isinstance(replica, int) and replica == 0:
            return seed
        offset = tf.cast(replica, seed.dtype) * _REPLICA_SEED_STRIDE
        return seed + tf.stack([offset, tf.zeros_like(offset)])

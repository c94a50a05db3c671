"""Dropout that draws a different mask on every replica of a distribution strategy.

Keras' `Dropout` draws from a `SeedGenerator` whose state is one variable; under a
strategy that variable is mirrored and advances the same way on every replica, so replica
r's image i gets exactly the mask of every other replica's image i (the global batch sees
1/replicas as many independent drop decisions as it should). `ReplicaDropout` advances that
same state the same way, so it stays a valid mirrored variable that a checkpoint saves and
restores exactly, and folds the replica id into the seed it draws with. Replica 0, and any
model outside a strategy, draws exactly the mask `keras.layers.Dropout` would.
"""

import keras
import tensorflow as tf

SEED_STATE_NAME = "seed_generator_state"


def replica_id():
    """This replica's id in its sync group: 0 outside any strategy and in cross-replica context,
    where there is one program to draw for (TPU replicas get a tensor, others a constant)."""
    context = tf.distribute.get_replica_context()
    return tf.constant(0) if context is None else context.replica_id_in_sync_group


def replica_seed(seed):
    """`seed` (an int32 [2] stateless seed) for this replica: unchanged on replica 0, else the
    replica id folded in with TensorFlow's fold-in, the op it provides for exactly this."""
    replica = replica_id()
    if tf.get_static_value(replica) == 0:
        return seed  # no extra ops in the single-device graph
    return tf.where(tf.equal(replica, 0), seed,
                    tf.random.experimental.stateless_fold_in(seed, tf.cast(replica, tf.int32)))


def seed_states(model):
    """The seed-generator state variables of `model`'s noise layers.

    A checkpoint of a Keras 3 model alone does not track them; saving them makes resumption
    draw the masks an uninterrupted run would.
    """
    return [variable for variable in model.variables if SEED_STATE_NAME in variable.path]


@keras.saving.register_keras_serializable(package="resnet_rs")
class ReplicaDropout(keras.layers.Dropout):
    """`keras.layers.Dropout` whose mask depends on its seed and on the replica id.

    Same arguments, config and inference behaviour as `Dropout` (inputs pass through when
    not training); only the seed a training call draws with differs, on replicas other than 0.
    """

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        if self.rate == 1:
            return tf.zeros_like(inputs)
        seed = self.seed_generator.next()  # the same state update on every replica
        # Keras' TensorFlow backend keeps seed state in int64 and casts it this way before
        # its stateless ops (XLA needs int32 seeds); doing the same keeps replica 0 bit-equal
        # to keras.layers.Dropout, which keras.random.dropout cannot (it takes no tensor seed).
        if seed.dtype != tf.int32:
            seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
        shape = tf.shape(inputs)
        noise_shape = None if self.noise_shape is None else [
            shape[i] if size is None else size for i, size in enumerate(self.noise_shape)]
        return tf.nn.experimental.stateless_dropout(inputs, rate=self.rate, noise_shape=noise_shape,
                                                    seed=replica_seed(seed))

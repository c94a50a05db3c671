"""The distributed training loop: model, optimizer, compiled steps, checkpoints, eval, export.

One `Trainer` per run. Its step is written once for every strategy: the per-replica
forward/backward pass is one compiled function (XLA or TF graph: `jit_compile`, measured
per machine by default, see models/hardware.py), the optimizer update (gradient
all-reduce) and the EMA (student/recipe.py WeightAverage) run after it under the strategy,
and `steps_per_execution` steps run inside one `tf.function` loop so a TPU host dispatches rarely.

Images arrive as pixels (uint8 for training, float32 for eval; student/inputs.py) and the
compiled step normalises them first: the host pipeline and the host-to-device feed carry a
quarter of float32's bytes per training image, and normalising there is one cheap
elementwise op on the device.
"""

import os
import time

import keras
import numpy as np
import tensorflow as tf

import models
from models import configs, hardware, noise, preprocessing
from student import recipe
from teacher import devices

CHECKPOINT_DIR = "checkpoints"


class NonFiniteError(RuntimeError):
    """Training produced a NaN or infinite loss or weight: it stops, saving and exporting nothing more."""


def make_strategy(kind, tpu=None):
    """cpu/gpu/tpu/auto as teacher.devices; plus `mirrored` and `multi_worker`.

    mirrored: MirroredStrategy over every local GPU, or every logical CPU device when
    there is no GPU (how the tests run two replicas on one CPU). multi_worker:
    MultiWorkerMirroredStrategy configured by the TF_CONFIG environment variable.
    """
    if kind == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        names = [device.name for device in (gpus or tf.config.list_logical_devices("CPU"))]
        # NCCL (the default all-reduce) needs GPUs; CPU replicas reduce on one device.
        return tf.distribute.MirroredStrategy(names, cross_device_ops=None if gpus else
                                              tf.distribute.ReductionToOneDevice())
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return devices.make_strategy(kind, tpu)


class Trainer:
    def __init__(self, config, strategy, input_builder, worker_id=None):
        self.config = config
        self.strategy = strategy
        self.inputs = input_builder
        self.has_pseudo = input_builder.pseudo_source is not None
        self.images_per_step = config.batch_size + config.pseudo_batch_size
        # Seeds the model's initial weights and the Keras seed generators of its dropout layers.
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            # replica_noise: each replica draws its own dropout and stochastic-depth masks from
            # the mirrored seed state and its replica id (models/noise.py); stock Keras dropout
            # would give image i of every replica the same mask.
            # Under the EMA, BatchNorm trains with the reference's momentum 0: its moving statistics are
            # each step's batch statistics, and the EMA of those is what eval and export use.
            bn = {"bn_momentum": configs.REFERENCE_BN_MOMENTUM} if config.ema_decay > 0 else {}
            self.model = models.create(config.model, config.num_classes, replica_noise=True, dtype_policy=
                                       "mixed_bfloat16" if config.precision == "bfloat16" else None, **bn)
            self.optimizer = recipe.make_optimizer(config)
            self.optimizer.build(self.model.trainable_variables)
            self.average = recipe.WeightAverage(recipe.averaged_variables(self.model), config.ema_decay,
                                                self.optimizer.iterations) if config.ema_decay > 0 else None
            # Each replica adds its step losses to its own copy (on its device); reading the
            # variable after a block sums the copies once: one cross-replica reduction per
            # block, not two per step. Not checkpointed: it is reset at every block.
            self._loss_sums = tf.Variable(tf.zeros([2]), trainable=False, name="block_loss_sums",
                                          synchronization=tf.VariableSynchronization.ON_READ,
                                          aggregation=tf.VariableAggregation.SUM)
            self._eval_sums = tf.Variable(tf.zeros([4]), trainable=False, name="eval_sums",
                                          synchronization=tf.VariableSynchronization.ON_READ,
                                          aggregation=tf.VariableAggregation.SUM)
        # Dropout/stochastic-depth randomness lives in Keras SeedGenerator variables, which a
        # checkpoint of the model alone does not track; saving them makes resumption exact, as
        # saving the EMA's shadow variables does.
        averages = {"weight_average": self.average} if self.average is not None else {}
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                              seed_states=noise.seed_states(self.model), **averages)
        # Every worker of a multi-worker job must save (the save is collective), but only the
        # chief's checkpoints are kept; the others write to a scratch directory of their own
        # (deleted by `close`) and all of them restore from the chief's.
        self.checkpoint_directory = os.path.join(config.model_dir, CHECKPOINT_DIR)
        save_directory = self.checkpoint_directory if worker_id is None else os.path.join(
            config.model_dir, f"{CHECKPOINT_DIR}-worker-{worker_id}")
        self.manager = tf.train.CheckpointManager(self.checkpoint, save_directory,
                                                  max_to_keep=config.keep_checkpoints)
        hardware.warn_if_precision_is_slow(config.precision, "student", strategy)
        jit_compile = hardware.parse_jit_compile(config.jit_compile)
        self.compile_timings = {}
        if jit_compile is None:
            measurable = strategy.num_replicas_in_sync == 1 and not hardware.has_accelerator()
            jit_compile = self._measure_compile_mode() if measurable else True
        self.compile_mode = hardware.mode_name(jit_compile)
        self.compute_gradients = tf.function(self._gradients, jit_compile=jit_compile)
        self.forward_eval = tf.function(lambda images: self.model(self._normalize(images), training=False),
                                        jit_compile=jit_compile)
        self._train_block = tf.function(self._train_block_fn)
        self._eval_pass = tf.function(self._eval_pass_fn)

    def _measure_compile_mode(self):
        """XLA or TF graph, whichever computes this run's gradients faster on this CPU.

        Both modes run the real step on zeros of the real batch shapes (models/hardware.py:
        which one wins differs between CPUs). The training forward pass moves BatchNorm
        statistics and dropout seeds, so every model variable is put back afterwards.
        """
        config, size = self.config, self.config.model_config.train_image_size
        batch = {"labeled_images": tf.zeros([config.batch_size, size, size, 3], tf.uint8),
                 "labels": tf.zeros([config.batch_size], tf.int32)}
        if self.has_pseudo:
            batch["pseudo_images"] = tf.zeros([config.pseudo_batch_size, size, size, 3], tf.uint8)
            batch["pseudo_targets"] = tf.fill([config.pseudo_batch_size, config.num_classes], 1 / config.num_classes)
        saved = [variable.numpy() for variable in self.model.variables]
        jit_compile, _, self.compile_timings = hardware.choose_jit_compile(
            self._gradients, (batch,), label=f"student {config.model} {config.precision}")
        for variable, value in zip(self.model.variables, saved):
            variable.assign(value)
        return jit_compile

    @property
    def step(self):
        return int(self.optimizer.iterations.numpy())

    def restore(self):
        """Restores the chief's latest checkpoint, if any; returns the step training continues from."""
        latest = tf.train.latest_checkpoint(self.checkpoint_directory)
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        self.latest_checkpoint = latest
        return self.step

    def close(self):
        if self.manager.directory != self.checkpoint_directory and tf.io.gfile.exists(self.manager.directory):
            tf.io.gfile.rmtree(self.manager.directory)

    def save(self):
        """Checkpoints the current step; refuses (NonFiniteError) weights that hold a NaN or an
        infinity, so the latest checkpoint is always one training can resume from."""
        if not bool(self._weights_are_finite()):
            raise NonFiniteError(
                f"the weights after step {self.step} are not finite (a NaN or infinite update), so they were not "
                f"checkpointed; {self.checkpoint_directory} keeps the last finite checkpoint "
                f"({tf.train.latest_checkpoint(self.checkpoint_directory) or 'none yet'}). Lower "
                "--base_learning_rate or check the inputs, then rerun to resume from it.")
        return self.manager.save(checkpoint_number=self.step)

    @tf.function
    def _weights_are_finite(self):
        values = [variable.value for variable in self.model.variables]  # the tf.Variables under Keras'
        return tf.reduce_all([tf.reduce_all(tf.math.is_finite(value)) for value in values if value.dtype.is_floating])

    def _normalize(self, images):
        """Pixels (0..255, any dtype) -> the model's input, as models.preprocessing.eval_transform gives it."""
        model_config = self.config.model_config
        return preprocessing.normalize(images, model_config.mean_rgb, model_config.stddev_rgb)

    def _gradients(self, batch):
        """Per-replica losses and gradients of one mixed batch (labeled first, then pseudo) of uint8 pixels,
        in --micro_batches passes whose gradients and losses are summed.

        Each pass takes the same slice of the labeled and of the pseudo part, so every pass is
        a mix in the step's ratio; the losses are divided by the global batch, so the sums are
        the step's. Only BatchNorm differs from one pass: its statistics are the pass's (as
        they are a replica's, not the global batch's, on any multi-device run), and its moving
        averages take one update per pass. A tf.range loop, so the step compiles one pass.
        """
        parts = self.config.micro_batches
        if parts == 1:
            return self._pass_gradients(batch)
        sliced = {key: tf.reshape(value, [parts, -1, *value.shape[1:]]) for key, value in batch.items()}
        gradients = [tf.zeros(variable.shape, variable.dtype) for variable in self.model.trainable_variables]
        labeled_loss, pseudo_loss = tf.constant(0.0), tf.constant(0.0)
        for part in tf.range(parts):
            pass_gradients, pass_labeled, pass_pseudo = self._pass_gradients(
                {key: value[part] for key, value in sliced.items()})
            gradients = [total + gradient for total, gradient in zip(gradients, pass_gradients)]
            labeled_loss, pseudo_loss = labeled_loss + pass_labeled, pseudo_loss + pass_pseudo
        return gradients, labeled_loss, pseudo_loss

    def _pass_gradients(self, batch):
        """Losses and gradients of one pass over a mixed batch (or micro-batch) of a replica."""
        labeled_count = self.config.batch_size // self.strategy.num_replicas_in_sync // self.config.micro_batches
        images = batch["labeled_images"]
        if self.has_pseudo:
            # One forward pass over the whole mixed batch, as Noisy Student: BatchNorm
            # statistics are those of the mix, not of either part.
            images = tf.concat([images, batch["pseudo_images"]], axis=0)
        images = self._normalize(images)
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            labeled_loss = recipe.labeled_loss(batch["labels"], logits[:labeled_count], self.config.num_classes,
                                               self.config.label_smoothing, self.config.batch_size)
            pseudo_loss = tf.constant(0.0)
            if self.has_pseudo:
                smoothing = self.config.label_smoothing if self.config.hard_pseudo_labels else 0.0
                pseudo_loss = recipe.pseudo_loss(batch["pseudo_targets"], logits[labeled_count:],
                                                 self.config.pseudo_batch_size, smoothing)
            loss = labeled_loss + recipe.pseudo_weight(self.config.pseudo_ratio,
                                                       self.config.pseudo_loss_weight) * pseudo_loss
        gradients = tape.gradient(loss, self.model.trainable_variables)
        return gradients, labeled_loss, pseudo_loss

    def _replica_step(self, batch):
        gradients, labeled_loss, pseudo_loss = self.compute_gradients(batch)
        # Under a strategy, Keras all-reduces (sums) the per-replica gradients here; the
        # losses were divided by the global batch, so the sum is the global mean.
        self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables))
        if self.average is not None:
            self.average.update()  # after the step, with its incremented count, as the reference's ema.apply
        self._loss_sums.assign_add(tf.stack([labeled_loss, pseudo_loss]))

    def _train_block_fn(self, iterator, num_steps):
        self._loss_sums.assign(tf.zeros([2]))  # in cross-replica context: every replica's copy
        for _ in tf.range(num_steps):
            self.strategy.run(self._replica_step, args=(next(iterator),))
        sums = self._loss_sums.read_value() / tf.cast(num_steps, tf.float32)  # the one reduction
        return sums[0], sums[1]

    def train_block(self, iterator, num_steps):
        """Runs `num_steps` steps; returns (mean labeled loss, mean pseudo loss, seconds)."""
        start = time.perf_counter()
        labeled_loss, pseudo_loss = self._train_block(iterator, tf.constant(num_steps, tf.int32))
        labeled_loss, pseudo_loss = float(labeled_loss), float(pseudo_loss)  # waits for the devices
        return labeled_loss, pseudo_loss, time.perf_counter() - start

    def learning_rate(self):
        return float(self.optimizer.learning_rate)

    def _eval_replica(self, batch):
        logits = tf.cast(self.forward_eval(batch["images"]), tf.float32)
        labels, mask = batch["labels"], batch["mask"]
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        top_5 = min(5, self.config.num_classes)
        correct_1 = tf.cast(tf.math.in_top_k(labels, logits, 1), tf.float32)
        correct_5 = tf.cast(tf.math.in_top_k(labels, logits, top_5), tf.float32)
        self._eval_sums.assign_add(tf.stack([tf.reduce_sum(cross_entropy * mask), tf.reduce_sum(correct_1 * mask),
                                             tf.reduce_sum(correct_5 * mask), tf.reduce_sum(mask)]))

    def _eval_pass_fn(self, dataset, swap_in_ema):
        """(loss sum, top-1 count, top-5 count, examples) over `dataset`, reduced once at the end.

        With `swap_in_ema`, the EMA values (weights and BatchNorm statistics) are swapped into
        the model for the pass and the training values put back after it, all inside this
        function: each replica keeps its copy of the training values on its own device (no trip
        through host memory; ~350 MB for resnet_rs_152) and loads its own copy of the shadows.
        An error inside the pass leaves the EMA values in the model: nothing catches it, the run
        stops, and what it saved before (checkpoints) holds the training values.
        """
        variables = self.average.sources if swap_in_ema else []
        if swap_in_ema:
            backup = self.strategy.run(lambda: [tf.identity(variable) for variable in variables])
            self.average.swap_in(self.strategy)
        self._eval_sums.assign(tf.zeros([4]))
        for batch in dataset:
            self.strategy.run(self._eval_replica, args=(batch,))
        totals = self._eval_sums.read_value()
        if swap_in_ema:
            # `update` hands each device's copy of the variable that device's backup.
            for variable, value in zip(variables, backup):
                self.strategy.extended.update(variable.value, lambda copy, saved: copy.assign(saved), args=(value,))
        return totals

    def evaluate(self, dataset, use_ema=True):
        """top-1, top-5 and loss of the EMA weights and BatchNorm statistics (or the training
        values: `use_ema=False`), in inference mode, on a distributed eval dataset."""
        swap = bool(use_ema and self.average is not None)
        loss, correct_1, correct_5, count = (float(value) for value in self._eval_pass(dataset, swap))
        count = max(count, 1.0)
        return {"top_1": correct_1 / count, "top_5": correct_5 / count, "loss": loss / count,
                "examples": int(count)}

    def final_model(self):
        """A float32 Keras model holding the EMA weights and BatchNorm statistics (the first
        replica's), built outside the strategy for saving; the training model holds them too after.

        It has stock Keras dropout (no `replica_noise`), so the saved file needs only Keras;
        the two dropouts hold no weights and are the identity outside training.
        """
        if self.average is not None:
            self.average.swap_in(self.strategy)
        model = models.create(self.config.model, self.config.num_classes)
        model.set_weights([np.asarray(value) for value in self.model.get_weights()])
        return model

"""The ResNet-RS family: sizes and costs against the reference, architecture, dtypes, saving."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import models
from models import profiling

# Parameter counts of tf_keras.applications.ResNetRS* at 1000 classes (the official
# architecture); FLOPs (2 x multiply-adds) at the paper's image sizes.
REFERENCE_PARAMS = {
    "resnet_rs_50": 35_745_288,
    "resnet_rs_101": 63_724_296,
    "resnet_rs_152": 86_773_256,
    "resnet_rs_200": 93_386_248,
    "resnet_rs_270": 130_104_520,
    "resnet_rs_350": 164_268_360,
    "resnet_rs_420": 192_262_216,
}
REFERENCE_GFLOPS = {
    "resnet_rs_50": (160, 4.6),
    "resnet_rs_101": (192, 12.0),
    "resnet_rs_152": (256, 31.1),
    "resnet_rs_420": (320, 127.9),
}


@pytest.mark.parametrize("name", models.PAPER_NAMES)
def test_paper_model_matches_reference_size_and_cost(name):
    model = models.create(name)
    assert model.count_params() == pytest.approx(REFERENCE_PARAMS[name], rel=1e-3)
    if name in REFERENCE_GFLOPS:
        image_size, gflops = REFERENCE_GFLOPS[name]
        assert profiling.count_flops(model, image_size) / 1e9 == pytest.approx(gflops, rel=0.02)
    keras.backend.clear_session()


def test_parameter_count_equals_tf_keras_reference_implementation():
    tf_keras = pytest.importorskip("tf_keras")
    reference = tf_keras.applications.ResNetRS50(weights=None, include_preprocessing=False)
    assert models.create("resnet_rs_50").count_params() == reference.count_params()


def _layers_of(model, kind):
    return [layer for layer in model.layers if isinstance(layer, kind)]


def test_stem_is_resnet_d_with_strided_conv_instead_of_max_pool():
    model = models.create("resnet_rs_50")
    assert not _layers_of(model, keras.layers.MaxPooling2D)
    stem = [layer for layer in _layers_of(model, keras.layers.Conv2D) if layer.name.startswith("stem")]
    assert [(c.kernel_size, c.strides, c.filters) for c in stem] == [
        ((3, 3), (2, 2), 32), ((3, 3), (1, 1), 32), ((3, 3), (1, 1), 64), ((3, 3), (2, 2), 64)]


def test_downsampling_shortcuts_average_pool_then_project():
    model = models.create("resnet_rs_50")
    pools = [layer.name for layer in _layers_of(model, keras.layers.AveragePooling2D)]
    assert pools == [f"stage{s}_block1_shortcut_pool" for s in (2, 3, 4)]
    for stage in (2, 3, 4):
        projection = model.get_layer(f"stage{stage}_block1_shortcut_conv")
        assert projection.strides == (1, 1) and projection.kernel_size == (1, 1)
    assert model.get_layer("stage1_block1_shortcut_conv").strides == (1, 1)


def test_every_block_has_squeeze_excitation_with_ratio_a_quarter():
    cfg = models.config("resnet_rs_50")
    model = models.create("resnet_rs_50")
    for stage, (blocks, filters) in enumerate(zip(cfg.block_counts, cfg.stage_filters), 1):
        for block in range(1, blocks + 1):
            reduce = model.get_layer(f"stage{stage}_block{block}_se_reduce")
            expand = model.get_layer(f"stage{stage}_block{block}_se_expand")
            assert (reduce.filters, expand.filters) == (filters, 4 * filters)


def test_initialisers_and_batch_norm_settings_follow_the_reference():
    model = models.create("resnet_rs_tiny")
    for conv in _layers_of(model, keras.layers.Conv2D):
        init = conv.kernel_initializer.get_config()
        assert (init["scale"], init["mode"], init["distribution"]) == (1.0, "fan_in", "truncated_normal")
    assert model.get_layer("logits").kernel_initializer.get_config()["stddev"] == 0.01
    for bn in _layers_of(model, keras.layers.BatchNormalization):
        assert bn.epsilon == 1e-5 and bn.momentum == models.config("resnet_rs_tiny").bn_momentum
        gamma = bn.gamma.numpy()
        expected = 0.0 if bn.name.startswith("stage") and bn.name.endswith("_bn3") else 1.0
        assert np.all(gamma == expected), bn.name


def test_stochastic_depth_is_one_draw_per_image_at_the_stage_rate():
    model = models.create("resnet_rs_200")
    rates = models.stochastic_depth_rates(models.config("resnet_rs_200"))
    drops = [layer for layer in _layers_of(model, keras.layers.Dropout) if "stochastic_depth" in layer.name]
    assert len(drops) == sum(models.config("resnet_rs_200").block_counts)
    for layer in drops:
        stage = int(layer.name[len("stage")])
        assert layer.rate == pytest.approx(rates[stage - 1])
        assert tuple(layer.noise_shape) == (None, 1, 1, 1)
    assert model.get_layer("top_dropout").rate == 0.25


@pytest.mark.parametrize("name", models.SMALL_NAMES)
def test_small_models_run_forward_and_round_trip_their_config(name):
    cfg = models.config(name)
    model = models.create(name, num_classes=7)
    images = np.random.default_rng(0).normal(size=(2, cfg.train_image_size, cfg.train_image_size, 3))
    logits = model(images.astype(np.float32), training=False)
    assert logits.shape == (2, 7) and logits.dtype == tf.float32
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(images, training=False), logits, atol=1e-5)


def test_training_mode_applies_noise_and_inference_mode_is_deterministic():
    model = models.create("resnet_rs_tiny", num_classes=5, dropout_rate=0.5, stochastic_depth_rate=0.5)
    images = np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(images, training=False), model(images, training=False))
    assert not np.allclose(model(images, training=True), model(images, training=True))


def test_replica_noise_draws_as_stock_dropout_on_one_device_and_round_trips_its_config():
    # Outside a strategy the replica id is 0, whose masks are Keras' own (the per-replica
    # masks under MirroredStrategy: tests/test_replica_noise.py).
    built = []
    for replica_noise in (False, True):
        keras.utils.set_random_seed(11)
        built.append(models.create("resnet_rs_tiny", num_classes=5, dropout_rate=0.5, stochastic_depth_rate=0.5,
                                   replica_noise=replica_noise))
    stock, replica = built
    noise = [layer for layer in replica.layers if isinstance(layer, keras.layers.Dropout)]
    assert len(noise) == 5 and all(type(layer).__name__ == "ReplicaDropout" for layer in noise)
    images = np.random.default_rng(5).normal(size=(4, 32, 32, 3)).astype(np.float32)
    for _ in range(2):  # both seed states advance alike
        np.testing.assert_array_equal(replica(images, training=True), stock(images, training=True))
    np.testing.assert_array_equal(replica(images, training=False), stock(images, training=False))
    clone = keras.Model.from_config(replica.get_config())
    assert type(clone.get_layer("top_dropout")).__name__ == "ReplicaDropout"


def test_bfloat16_policy_computes_in_bfloat16_with_float32_variables_and_logits():
    fp32 = models.create("resnet_rs_tiny", num_classes=10)
    bf16 = models.create("resnet_rs_tiny", num_classes=10, dtype_policy="mixed_bfloat16")
    bf16.set_weights(fp32.get_weights())
    conv = bf16.get_layer("stem_conv1")
    assert (conv.compute_dtype, conv.variable_dtype) == ("bfloat16", "float32")
    assert all(w.dtype == "float32" for w in bf16.weights)
    images = np.random.default_rng(2).normal(size=(4, 32, 32, 3)).astype(np.float32)
    logits = bf16(images, training=False)
    assert logits.dtype == tf.float32
    reference = fp32(images, training=False).numpy()
    # bfloat16 keeps 8 bits of mantissa: compare at a tolerance scaled to the logits.
    np.testing.assert_allclose(logits, reference, atol=0.05 * np.abs(reference).max() + 1e-3)


@pytest.mark.parametrize("dtype_policy", [None, "mixed_bfloat16"])
def test_forward_pass_compiles_with_xla(dtype_policy):
    model = models.create("resnet_rs_tiny", num_classes=10, dtype_policy=dtype_policy)
    images = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype(np.float32)
    compiled = tf.function(lambda x: model(x, training=False), jit_compile=True)
    atol = 1e-4 if dtype_policy is None else 0.05
    np.testing.assert_allclose(compiled(images), model(images, training=False), atol=atol, rtol=1e-3)
    assert "convolution" in compiled.experimental_get_compiler_ir(images)(stage="hlo")


def test_saved_keras_file_loads_in_a_process_that_never_imports_this_project(tmp_path):
    model = models.create("resnet_rs_tiny", num_classes=3)
    images = np.random.default_rng(4).normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "logits.npy", model(images, training=False).numpy())
    model.save(tmp_path / "model.keras")
    check = textwrap.dedent("""
        import sys, keras, numpy as np
        model = keras.saving.load_model(sys.argv[1] + "/model.keras")  # safe_mode stays on
        assert not any(m.startswith(("models", "teacher", "pipeline", "student")) for m in sys.modules)
        logits = model(np.load(sys.argv[1] + "/images.npy"), training=False)
        np.testing.assert_allclose(logits, np.load(sys.argv[1] + "/logits.npy"), atol=1e-5)
        print("loaded", model.name)
    """)
    result = subprocess.run([sys.executable, "-c", check, str(tmp_path)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded resnet_rs_tiny" in result.stdout


def test_num_classes_must_be_positive():
    with pytest.raises(ValueError, match="num_classes"):
        models.create("resnet_rs_tiny", num_classes=0)

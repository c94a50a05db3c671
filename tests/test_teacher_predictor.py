"""teacher.load / Teacher.predict: round trips, padding, temperature, devices, errors."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import models
import teacher
from models import preprocessing
from teacher import devices, predictor


@pytest.fixture(scope="module")
def tiny_model():
    return models.create("resnet_rs_tiny", num_classes=10)


@pytest.fixture(scope="module")
def teacher_dir(tiny_model, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("teacher") / "tiny")
    teacher.export(tiny_model, "resnet_rs_tiny", output, class_names=[f"digit {i}" for i in range(10)])
    return output


def _images(count, height=50, width=60, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def _expected_probabilities(model, images, temperature=1.0):
    inputs = preprocessing.eval_transform(images, models.config("resnet_rs_tiny"))
    return tf.nn.softmax(model(inputs, training=False) / temperature).numpy()


@pytest.mark.parametrize("where", ["local", "ram"])
def test_export_load_predict_round_trip(tiny_model, tmp_path, where):
    output = str(tmp_path / "t") if where == "local" else f"ram://teachers/{os.getpid()}/t"
    meta = teacher.export(tiny_model, "resnet_rs_tiny", output)
    loaded = teacher.TeacherMetadata.from_json(tf.io.gfile.GFile(output + "/teacher.json").read(), "x")
    assert loaded == meta and meta.num_classes == 10 and meta.eval_image_size == 32
    images = _images(6)
    result = teacher.load(output, batch_size=4).predict(images, top_k=3, full_distribution=True)
    np.testing.assert_allclose(result.distribution, _expected_probabilities(tiny_model, images), atol=1e-5)
    assert result.top_k_indices.shape == (6, 3) and result.top_k_indices.dtype == np.int32
    assert np.all(np.diff(result.top_k_probabilities, axis=1) <= 0)
    np.testing.assert_allclose(result.confidence, result.distribution.max(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(result.top_k_indices[:, 0], result.distribution.argmax(axis=1))


def test_teacher_id_is_a_content_hash(tiny_model, teacher_dir, tmp_path):
    again = teacher.export(tiny_model, "resnet_rs_tiny", str(tmp_path / "again"),
                           class_names=[f"digit {i}" for i in range(10)])
    assert again.teacher_id == teacher.load(teacher_dir).teacher_id
    other = models.create("resnet_rs_tiny", num_classes=10)
    assert teacher.export(other, "resnet_rs_tiny", str(tmp_path / "other")).teacher_id != again.teacher_id


def test_ragged_last_batch_is_padded_and_compiles_once(teacher_dir, tiny_model):
    loaded = predictor.Teacher(teacher_dir, batch_size=4)
    images = _images(9, seed=1)
    result = loaded.predict(images, full_distribution=True)
    assert result.confidence.shape == (9,)
    assert loaded.compiled_step_traces == 1
    np.testing.assert_allclose(result.distribution, _expected_probabilities(tiny_model, images), atol=1e-5)


def test_temperature(teacher_dir, tiny_model):
    images = _images(3, seed=2)
    loaded = teacher.load(teacher_dir)
    hot = loaded.predict(images, temperature=1e6, full_distribution=True)
    np.testing.assert_allclose(hot.distribution, 0.1, atol=1e-5)
    np.testing.assert_allclose(hot.entropy, np.log(10), atol=1e-4)
    cool = loaded.predict(images, temperature=0.5, full_distribution=True)
    np.testing.assert_allclose(cool.distribution, _expected_probabilities(tiny_model, images, 0.5), atol=1e-5)
    # Selection filters on the teacher's own (temperature 1) confidence, as Noisy Student.
    np.testing.assert_allclose(cool.confidence, _expected_probabilities(tiny_model, images).max(axis=1), atol=1e-5)
    np.testing.assert_allclose(hot.confidence, cool.confidence, atol=1e-6)
    one = loaded.predict(images, temperature=1.0, full_distribution=True)
    p = _expected_probabilities(tiny_model, images)
    np.testing.assert_allclose(one.entropy, -(p * np.log(p)).sum(axis=1), atol=1e-5)


def test_images_of_different_sizes_and_encoded_bytes(teacher_dir, tiny_model):
    images = [_images(1, 40, 70, seed=3)[0], _images(1, 90, 35, seed=4)[0]]
    encoded = [tf.io.encode_png(image).numpy() for image in images]
    loaded = teacher.load(teacher_dir)
    from_arrays = loaded.predict(images, full_distribution=True).distribution
    from_bytes = loaded.predict(encoded, full_distribution=True).distribution
    np.testing.assert_allclose(from_arrays, from_bytes, atol=1e-6)
    expected = np.concatenate([_expected_probabilities(tiny_model, image[None]) for image in images])
    np.testing.assert_allclose(from_arrays, expected, atol=1e-5)


# Measured on a 2-core AMD EPYC: the largest probability differences from float32 were 3e-5
# (bfloat16) and 3e-6 (float16) with this teacher, 4e-3 and 5e-4 with one whose logits are
# spread (conftest's tiny_teacher); this teacher's top-1 margins are about 2e-3.
@pytest.mark.parametrize("precision, tolerance", [("bfloat16", 0.02), ("float16", 1e-3)])
def test_16_bit_prediction_agrees_with_float32(teacher_dir, precision, tolerance):
    images = _images(8, seed=5)
    full = teacher.load(teacher_dir).predict(images, full_distribution=True)
    mixed = teacher.load(teacher_dir, precision=precision).predict(images, full_distribution=True)
    assert mixed.distribution.dtype == np.float32 and mixed.top_k_probabilities.dtype == np.float32
    np.testing.assert_allclose(mixed.distribution, full.distribution, atol=tolerance)
    np.testing.assert_array_equal(mixed.top_k_indices[:, 0], full.top_k_indices[:, 0])


def test_bare_saved_model_follows_the_signature(teacher_dir):
    images = _images(3, seed=6)
    bare = teacher.load(os.path.join(teacher_dir, "saved_model")).predict(images, full_distribution=True)
    full = teacher.load(teacher_dir).predict(images, full_distribution=True)
    np.testing.assert_allclose(bare.distribution, full.distribution, atol=1e-5)
    assert teacher.load(os.path.join(teacher_dir, "saved_model")).teacher_id is None


def test_saved_model_serves_jpeg_bytes_without_this_project(teacher_dir, tmp_path):
    jpeg = tf.io.encode_jpeg(_images(1, seed=7)[0]).numpy()
    (tmp_path / "image.jpg").write_bytes(jpeg)
    check = textwrap.dedent("""
        import sys, tensorflow as tf
        serve = tf.saved_model.load(sys.argv[1] + "/saved_model").signatures["serving_default"]
        logits = serve(image_bytes=tf.constant([open(sys.argv[2], "rb").read()] * 2))["logits"]
        assert not any(m.split(".")[0] in ("models", "teacher") for m in sys.modules)
        print("logits", logits.shape)
    """)
    result = subprocess.run([sys.executable, "-c", check, teacher_dir, str(tmp_path / "image.jpg")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "logits (2, 10)" in result.stdout


def test_load_is_shared_per_process_and_thread_safe(teacher_dir):
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        loaded = list(pool.map(lambda _: teacher.load(teacher_dir, batch_size=2), range(8)))
        assert all(t is loaded[0] for t in loaded)
        results = list(pool.map(lambda seed: loaded[0].predict(_images(3, seed=seed)).confidence, range(4)))
    for seed, confidence in enumerate(results):
        np.testing.assert_allclose(confidence, loaded[0].predict(_images(3, seed=seed)).confidence, atol=1e-6)


def test_two_replicas_give_the_same_labels_as_one(teacher_dir):
    check = textwrap.dedent("""
        import sys, numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import teacher
        images = np.random.default_rng(0).integers(0, 256, (7, 48, 48, 3), dtype=np.uint8)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        two = teacher.load(sys.argv[1], batch_size=4, strategy=strategy).predict(images, full_distribution=True)
        one = teacher.load(sys.argv[1], batch_size=4).predict(images, full_distribution=True)
        assert strategy.num_replicas_in_sync == 2
        np.testing.assert_allclose(two.distribution, one.distribution, atol=1e-5)
        print("replicas agree")
    """)
    result = subprocess.run([sys.executable, "-c", check, teacher_dir], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas agree" in result.stdout


def test_strategy_names():
    assert devices.make_strategy("cpu") is tf.distribute.get_strategy()
    with pytest.raises(ValueError, match="--strategy='npu'"):
        devices.make_strategy("npu")
    if not tf.config.list_physical_devices("GPU"):
        with pytest.raises(ValueError, match="no GPU"):
            devices.make_strategy("gpu")


def test_a_directory_that_is_not_a_teacher(tmp_path):
    with pytest.raises(teacher.TeacherError, match="not a teacher directory"):
        teacher.load(str(tmp_path))


def test_class_count_mismatch_between_json_and_model(teacher_dir, tmp_path):
    broken = tmp_path / "broken"
    tf.io.gfile.makedirs(str(broken))
    for name in ("teacher.json", "model.keras"):
        tf.io.gfile.copy(os.path.join(teacher_dir, name), str(broken / name))
    record = json.loads((broken / "teacher.json").read_text())
    record["num_classes"], record["class_names"] = 12, [f"c{i}" for i in range(12)]
    (broken / "teacher.json").write_text(json.dumps(record))
    with pytest.raises(teacher.TeacherError, match="12 classes but the model outputs 10"):
        predictor.Teacher(str(broken))
    record["num_classes"] = 11
    (broken / "teacher.json").write_text(json.dumps(record))
    with pytest.raises(teacher.TeacherError, match="num_classes is 11 but class_names has 12"):
        predictor.Teacher(str(broken))


def test_a_model_file_with_python_code_is_refused(tmp_path):
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Lambda(lambda x: keras.ops.mean(x, axis=(1, 2)))(inputs)
    outputs = keras.layers.Dense(10)(outputs)
    directory = str(tmp_path / "evil")
    teacher.export(keras.Model(inputs, outputs), "resnet_rs_tiny", directory)
    with pytest.raises(ValueError, match="(?i)lambda|unsafe|safe_mode"):
        predictor.Teacher(directory)


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 32, 32), np.uint8), "shape \\(N, H, W, 3\\)"),
    (np.zeros((2, 32, 32, 3), np.float32), "uint8"),
    ([np.zeros((32, 32), np.uint8)], "image 0 must be uint8 \\(H, W, 3\\)"),
])
def test_wrong_rank_or_dtype_is_named(teacher_dir, images, message):
    with pytest.raises(teacher.TeacherError, match=message):
        teacher.load(teacher_dir).predict(images)


def test_bad_options_are_named(teacher_dir):
    with pytest.raises(teacher.TeacherError, match="temperature"):
        teacher.load(teacher_dir).predict(_images(1), temperature=0)
    with pytest.raises(teacher.TeacherError, match="precision='float8': expected one of"):
        predictor.Teacher(teacher_dir, precision="float8")


def test_compile_mode_is_measured_on_a_cpu_and_forced_by_request(teacher_dir, tiny_model):
    chosen = predictor.Teacher(teacher_dir, batch_size=4)
    assert set(chosen.compile_timings) == {"xla", "graph"} and all(t > 0 for t in chosen.compile_timings.values())
    faster = min(chosen.compile_timings, key=chosen.compile_timings.get)
    assert chosen.compile_mode == faster
    images = _images(5, seed=4)
    expected = _expected_probabilities(tiny_model, images)
    for request, mode in (("xla", "xla"), (True, "xla"), ("graph", "graph"), (False, "graph")):
        forced = predictor.Teacher(teacher_dir, batch_size=4, jit_compile=request)
        assert forced.compile_mode == mode and forced.compile_timings == {}
        # The two modes round differently in the last bits, never by more than this.
        np.testing.assert_allclose(forced.predict(images, full_distribution=True).distribution, expected, atol=1e-5)
    with pytest.raises(teacher.TeacherError, match="jit_compile='fast': expected one of"):
        predictor.Teacher(teacher_dir, jit_compile="fast")


def test_precision_warning_is_about_the_device_of_the_teachers_strategy(teacher_dir, monkeypatch, caplog):
    from models import hardware

    info = hardware.cpu_info()
    assert info["model"] and set(info["flags"]) == set(hardware.ISA_FLAGS)
    assert hardware.strategy_device(devices.make_strategy("cpu")) == ("CPU", None)
    monkeypatch.setattr(hardware, "cpu_info", lambda: {"model": "a CPU", "flags": dict.fromkeys(hardware.ISA_FLAGS,
                                                                                                False)})
    with caplog.at_level("WARNING"):
        predictor.Teacher(teacher_dir, batch_size=4, precision="bfloat16", jit_compile="graph")
    assert "bfloat16 on a CPU without bfloat16 units (a CPU" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        predictor.Teacher(teacher_dir, batch_size=4, precision="float32", jit_compile="graph")
    assert "precision" not in caplog.text
    # The teacher asks about its own strategy's device, not the host CPU: here a T4 stands in.
    asked = []
    monkeypatch.setattr(hardware, "strategy_device", lambda strategy: asked.append(strategy) or ("GPU", (7, 5)))
    strategy = devices.make_strategy("cpu")
    with caplog.at_level("WARNING"):
        predictor.Teacher(teacher_dir, batch_size=4, precision="bfloat16", strategy=strategy, jit_compile="graph")
    assert asked == [strategy] and "bfloat16 on a GPU of compute capability 7.5" in caplog.text


def test_load_shares_one_teacher_per_compile_mode_spelling(teacher_dir):
    assert teacher.load(teacher_dir, batch_size=3, jit_compile="graph") is teacher.load(
        teacher_dir, batch_size=3, jit_compile=False)
    assert teacher.load(teacher_dir, batch_size=3, jit_compile="xla") is not teacher.load(
        teacher_dir, batch_size=3, jit_compile="graph")


def _eager_reference(loaded, images, temperature, top_k):
    """What `predict` gave before its preparation was compiled: the eager transform, one
    image at a time, then the same fixed-batch step."""
    meta = loaded.metadata
    prepared = tf.concat([preprocessing.normalize(
        preprocessing.center_crop_and_resize(image[np.newaxis], meta.eval_image_size, meta.crop_padding),
        meta.mean_rgb, meta.stddev_rgb) for image in images], axis=0)
    parts = []
    for start in range(0, len(images), loaded.batch_size):
        chunk = prepared[start:start + loaded.batch_size]
        valid = int(chunk.shape[0])
        chunk = tf.concat([chunk, tf.zeros([loaded.batch_size - valid, *chunk.shape[1:]])], axis=0)
        outputs = loaded._step(chunk, tf.constant(temperature, tf.float32), top_k)
        parts.append({k: v[:valid].numpy() for k, v in outputs.items()})
    return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}


def test_compiled_preparation_of_mixed_sizes_matches_the_eager_transform(tiny_teacher, monkeypatch):
    loaded = predictor.Teacher(tiny_teacher, batch_size=4, jit_compile="graph")
    rng = np.random.default_rng(8)
    sizes = [(17, 23), (64, 48), (300, 200), (5, 7), (1, 1), (2, 3), (1, 40), (33, 2), (64, 64), (31, 97), (8, 8)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    images.append(rng.integers(0, 256, (40, 90, 3), dtype=np.uint8)[:, ::2])  # not contiguous
    expected = _eager_reference(loaded, images, 2.0, 3)
    result = loaded.predict(images, temperature=2.0, top_k=3, full_distribution=True)
    np.testing.assert_array_equal(result.top_k_indices, expected["top_k_indices"])
    for name in ("top_k_probabilities", "confidence", "entropy", "distribution"):
        np.testing.assert_allclose(getattr(result, name), expected[name], rtol=0, atol=1e-6, err_msg=name)
    assert loaded.preparation_traces == 1  # one trace for every mix of sizes
    # Packs cut small (an image alone when it is over the cap) give the same labels.
    monkeypatch.setattr(predictor, "_PACK_BYTES", 2000)
    small_packs = loaded.predict(images, temperature=2.0, top_k=3, full_distribution=True)
    np.testing.assert_array_equal(small_packs.top_k_indices, result.top_k_indices)
    np.testing.assert_allclose(small_packs.distribution, result.distribution, rtol=0, atol=1e-6)
    # A same-size array keeps its batched path: one more trace, whatever its size.
    for height, width in ((20, 30), (70, 50)):
        batch = rng.integers(0, 256, (5, height, width, 3), dtype=np.uint8)
        as_array = loaded.predict(batch, temperature=2.0, top_k=3, full_distribution=True)
        as_list = loaded.predict(list(batch), temperature=2.0, top_k=3, full_distribution=True)
        np.testing.assert_array_equal(as_array.top_k_indices, as_list.top_k_indices)
        np.testing.assert_allclose(as_array.distribution, as_list.distribution, rtol=0, atol=1e-6)
    assert loaded.preparation_traces == 2 and loaded.compiled_step_traces == 1


def test_an_image_without_pixels_is_named(teacher_dir):
    with pytest.raises(teacher.TeacherError, match="image 1 has no pixels: shape \\(0, 8, 3\\)"):
        teacher.load(teacher_dir).predict([np.zeros((4, 4, 3), np.uint8), np.zeros((0, 8, 3), np.uint8)])

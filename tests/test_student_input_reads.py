"""What the student input reads: nothing to count the pseudo set, one file at most to resume.

Records are counted where they leave the TFRecord reader (sources.read_tfrecord_file, through
which every student read of a TFRecord file goes, a TFDS dataset's files included), by a
tf.data map that increments a variable.
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from student import inputs, pseudo, sources
from student.config import ConfigError, TrainConfig
from test_student_fixtures import write_image_folder, write_labeled_tfrecords, write_pseudo_labels

NUM_PSEUDO, NUM_SHARDS = 120, 4  # 30 records a shard (write_pseudo_labels deals records to shards in turn)
SHARD_RECORDS = NUM_PSEUDO // NUM_SHARDS


@pytest.fixture
def reads(monkeypatch):
    """A variable that counts every record read from a TFRecord file by the student input."""
    counter = tf.Variable(0, dtype=tf.int64)
    real = sources.read_tfrecord_file

    def counted(name):
        def count(record):
            with tf.control_dependencies([counter.assign_add(1)]):
                return tf.identity(record)

        return real(name).map(count)

    monkeypatch.setattr(sources, "read_tfrecord_file", counted)
    return counter


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("reads")
    return {"images": write_image_folder(str(root / "images"), num_classes=3, per_class=3),
            "pseudo": write_pseudo_labels(str(root / "pseudo"), num_examples=NUM_PSEUDO, num_shards=NUM_SHARDS,
                                          image_size=32),
            "labeled": write_labeled_tfrecords(str(root / "labeled-train"), num_examples=12)}


def context(pipelines=1, pipeline=0):
    return tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=pipeline,
                                      num_replicas_in_sync=pipelines)


def without_read_ahead(dataset):
    """`dataset` with no prefetch added and no autotuned parallelism: what reaching an element
    reads, rather than how far tf.data's buffers run ahead of it."""
    options = tf.data.Options()
    options.experimental_optimization.inject_prefetch = False
    options.autotune.enabled = False
    return dataset.with_options(options)


def stream_items(stream, count):
    return [(int(position), record["image"].numpy()) for position, record in stream.take(count)]


def test_the_counter_counts_every_record_a_reader_yields_even_when_skipped(data, reads):
    name = sorted(tf.io.gfile.glob(data["pseudo"]))[0]
    next(iter(without_read_ahead(sources.read_tfrecord_file(name).skip(5))))
    assert int(reads.numpy()) == 6


def test_a_resume_at_90_percent_of_an_epoch_reads_at_most_one_file_before_its_first_example(data, reads):
    share = pseudo.open_pseudo(data["pseudo"], 3).share()
    assert share.count_segments() == [SHARD_RECORDS] * NUM_SHARDS and int(reads.numpy()) == 0
    seed = tf.constant([7, 1], tf.int64)
    position = NUM_PSEUDO + NUM_PSEUDO * 9 // 10  # 90% into the second epoch
    resumed = inputs.example_stream(share, position, seed, shuffle_buffer=4)
    first = stream_items(without_read_ahead(resumed), 1)
    read_to_resume = int(reads.numpy())
    assert 0 < read_to_resume <= SHARD_RECORDS
    # The resumed stream is the uninterrupted one, across the next epoch boundary.
    reads.assign(0)
    uninterrupted = stream_items(inputs.example_stream(share, 0, seed, shuffle_buffer=4), position + 40)
    assert int(reads.numpy()) >= position  # what reaching the position costs without skipping
    assert first + stream_items(resumed.skip(1), 39) == uninterrupted[position:]
    assert [p for p, _ in uninterrupted[position:]] == list(range(position, position + 40))


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.9, 0.99])
def test_every_resume_position_continues_the_uninterrupted_epoch(data, fraction):
    share = pseudo.open_pseudo(data["pseudo"], 3).share(1, 2)  # the second of two pipelines
    seed = tf.constant([3, 1], tf.int64)
    position = int(share.num_records * fraction)
    full = stream_items(inputs.example_stream(share, 0, seed, shuffle_buffer=7), position + 10)
    assert stream_items(inputs.example_stream(share, position, seed, shuffle_buffer=7), 10) == full[position:]


def _builder(data, **flags):
    labeled = sources.open_source(flags.pop("labeled", data["images"]), num_classes=3)
    config = TrainConfig(model="resnet_rs_tiny", labeled="x", model_dir="unused", pseudo="p", pseudo_ratio=3,
                         batch_size=2, num_classes=3, shuffle_buffer=4, eval_batch_size=4, **flags)
    return inputs.InputBuilder(config, labeled, pseudo.open_pseudo(data["pseudo"], 3),
                               eval_source=sources.open_source(data["labeled"], num_classes=3, flag="eval"))


def test_two_input_pipelines_start_without_reading_a_pseudo_record(data, reads):
    builder = _builder(data)
    datasets = [builder.train_dataset(context(2, pipeline), start_step=17) for pipeline in (0, 1)]
    assert int(reads.numpy()) == 0  # start-up, resume position included: sizes from the manifest
    batches = [next(iter(dataset)) for dataset in datasets]
    assert int(reads.numpy()) > 0  # the counter does see the reads that training makes
    assert all(batch["pseudo_images"].shape == (3, 32, 32, 3) for batch in batches)
    assert not np.array_equal(batches[0]["pseudo_images"].numpy(), batches[1]["pseudo_images"].numpy())


def test_labeled_examples_is_trusted_and_a_tfrecord_eval_set_is_counted_once(data, reads):
    builder = _builder(data, labeled=data["labeled"], labeled_examples=12)
    builder.train_dataset(context())
    assert int(reads.numpy()) == 0  # neither --labeled (its count given) nor --pseudo was read
    first = [builder.eval_dataset(context()) for _ in range(2)]
    assert int(reads.numpy()) == 12  # the eval set's one counting pass, for both evaluations
    assert [len(list(dataset)) for dataset in first] == [3, 3]  # 12 records in batches of 4


def test_each_host_evaluates_on_its_own_eval_files_and_every_record_counts_once(data, reads):
    builder = _builder(data, labeled=data["labeled"], labeled_examples=12)  # --eval: 12 records, 2 files
    datasets = [builder.eval_dataset(context(2, pipeline)) for pipeline in (0, 1)]
    assert int(reads.numpy()) == 12  # the one counting pass, shared by both pipelines
    counted = []
    for dataset in datasets:
        reads.assign(0)
        batches = list(dataset)
        assert int(reads.numpy()) == 6  # its own file only, not the whole set
        counted.append((len(batches), sum(float(batch["mask"].numpy().sum()) for batch in batches)))
    assert counted == [(3, 6.0), (3, 6.0)]  # the same number of steps; 12 records counted once in all


class TinyShapes(tfds.core.GeneratorBasedBuilder):
    """40 small PNGs in 3 classes: a real prepared TFDS dataset (files, split metadata) for slicing."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3)), "label": tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        rng = np.random.default_rng(0)
        for index in range(40):
            yield index, {"image": rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), "label": index % 3}


TFDS_FILES, FILE_RECORDS = 4, 10  # TinyShapes written in 4 files of 10 records
TFDS_RECORDS = TFDS_FILES * FILE_RECORDS


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    """The data_dir of a prepared TinyShapes: 40 records in 4 files."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    TinyShapes(data_dir=data_dir).download_and_prepare(
        download_config=tfds.download.DownloadConfig(num_shards=TFDS_FILES))
    assert tfds.builder("tiny_shapes", data_dir=data_dir).info.splits["train"].shard_lengths == [
        FILE_RECORDS] * TFDS_FILES
    return data_dir


def tfds_file_of_image(data_dir):
    """Encoded image -> index of the TinyShapes file that stores it (read through TFDS itself)."""
    builder = tfds.builder("tiny_shapes", data_dir=data_dir)
    file_of = {}
    for index in range(TFDS_FILES):
        shard = builder.as_dataset(split=tfds.core.ReadInstruction("train", from_=index, to=index + 1, unit="shard"),
                                   decoders={"image": tfds.decode.SkipDecoding()})
        file_of.update((example["image"].numpy(), index) for example in shard)
    assert len(file_of) == TFDS_RECORDS
    return file_of


def test_a_tfds_share_reads_its_files_in_a_new_order_every_epoch(tiny_shapes, reads):
    share = sources.open_source("tfds:tiny_shapes", split="train", data_dir=tiny_shapes).share()
    assert share.count_segments() == [FILE_RECORDS] * TFDS_FILES and share.num_records == TFDS_RECORDS
    assert int(reads.numpy()) == 0  # one segment per file, sizes from TFDS's split metadata: nothing read
    file_of = tfds_file_of_image(tiny_shapes)
    stream = stream_items(inputs.example_stream(share, 0, tf.constant([5, 0], tf.int64), shuffle_buffer=4),
                          2 * TFDS_RECORDS)
    orders = []
    for epoch in range(2):
        images = [image for _, image in stream[epoch * TFDS_RECORDS:(epoch + 1) * TFDS_RECORDS]]
        assert sorted(images) == sorted(file_of)  # every record of the split once an epoch
        files = [file_of[image] for image in images]
        order = files[::FILE_RECORDS]
        assert files == [index for index in order for _ in range(FILE_RECORDS)]  # whole files, one after another
        assert sorted(order) == list(range(TFDS_FILES))
        orders.append(order)
    assert orders[0][0] != orders[1][0]  # the file order is drawn again each epoch
    # Evaluation (no order seed) reads the split in TFDS's stored order.
    stored = [record["image"].numpy() for record in share.records_for_epoch()]
    assert [file_of[image] for image in stored] == [index for index in range(TFDS_FILES) for _ in range(FILE_RECORDS)]


@pytest.mark.parametrize("pipelines", [1, 2, 3])  # 3: sub-splits of 14, 13 and 13 records end inside files
def test_a_tfds_share_resumed_by_split_slicing_continues_the_uninterrupted_stream(tiny_shapes, pipelines):
    source = sources.open_source("tfds:tiny_shapes", split="train", data_dir=tiny_shapes)
    share = source.share(pipelines - 1, pipelines)
    size = share.num_records
    assert sum(share.count_segments()) == size == [40, 20, 13][pipelines - 1]
    assert len(share.segments) == [4, 2, 2][pipelines - 1]  # one segment per file the sub-split touches
    seed = tf.constant([5, 0], tf.int64)
    full = stream_items(inputs.example_stream(share, 0, seed, shuffle_buffer=4), 3 * size)
    assert sorted(image for _, image in full[:size]) == sorted(image for _, image in full[size:2 * size])
    for position in (0, 1, size // 4, size // 2, size * 9 // 10, size + 3, 2 * size - 1):
        resumed = stream_items(inputs.example_stream(share, position, seed, shuffle_buffer=4), 6)
        assert resumed == full[position:position + 6], position


@pytest.mark.parametrize("position", [0, TFDS_RECORDS // 2, TFDS_RECORDS * 9 // 10, TFDS_RECORDS + 13])
def test_a_tfds_share_starts_or_resumes_reading_at_most_one_file(tiny_shapes, reads, position):
    share = sources.open_source("tfds:tiny_shapes", split="train", data_dir=tiny_shapes).share()
    seed = tf.constant([5, 0], tf.int64)
    first = stream_items(without_read_ahead(inputs.example_stream(share, position, seed, shuffle_buffer=4)), 1)
    assert 0 < int(reads.numpy()) <= FILE_RECORDS  # TFDS's reads of its files go through read_tfrecord_file
    assert first == stream_items(inputs.example_stream(share, 0, seed, shuffle_buffer=4), position + 1)[position:]


def test_a_labeled_examples_count_the_files_contradict_stops_a_resume_naming_the_flag(data):
    builder = _builder(data, labeled=data["labeled"], labeled_examples=13)  # the files hold 12
    builder.train_dataset(context())  # a fresh start trusts it: no pass over --labeled
    with pytest.raises(ConfigError, match=r"--labeled_examples=13 but the files of --labeled hold 12"):
        builder.train_dataset(context(), start_step=3)

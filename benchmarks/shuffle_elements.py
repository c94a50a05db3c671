"""Element sizes for benchmarks.shuffle_bytes: every GroupByKey of both stages' graphs with the
coder Beam gives its input, and the bytes per element each encodes, measured on elements the
project's own functions make (an index entry read back, elements.pack, unit tuples, bucket records)."""

import json
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
from apache_beam import coders, typehints  # noqa: E402
from apache_beam.coders.coders import GlobalWindowCoder  # noqa: E402
from apache_beam.pipeline import PipelineVisitor  # noqa: E402
from apache_beam.transforms.window import GlobalWindow  # noqa: E402
from apache_beam.utils.timestamp import MIN_TIMESTAMP  # noqa: E402
from apache_beam.utils.windowed_value import PANE_INFO_UNKNOWN, WindowedValue  # noqa: E402

from pipeline import buckets, elements, index, options, predict, records, select, sources  # noqa: E402
from pipeline.elements import Prediction  # noqa: E402

IMAGE_BYTES = 110_000  # A: the input size
SAMPLES = 64  # elements measured per row: sizes vary only with varints (bucket ids, counts)


def uri_of(i, chars):
    """A gs:// URI of exactly `chars` characters (like gs://my-unlabeled-bucket/images/0001/img_2345.jpg)."""
    base = "gs://my-unlabeled-bucket/images/0001/img_" if chars >= 46 else "gs://b/"
    digits = chars - len(base) - 4
    assert digits >= 1, f"--uri_chars={chars} is too short for a gs:// URI"
    return f"{base}{i % 10 ** digits:0{digits}d}.jpg"


def prediction_of(i, uri_chars, top_k, classes):
    """A Prediction as stage 2 sees it: written as an index entry and read back (float32
    values as Python floats), so its encodings are those of the real job."""
    rng = np.random.default_rng(i)
    probabilities = np.sort(rng.dirichlet(np.full(classes, 0.05)).astype(np.float32))[::-1][:top_k]
    indices = rng.choice(classes, top_k, replace=False)
    entropy = np.float32(rng.uniform(0.1, 3.0))
    key = rng.bytes(32).hex()
    p = Prediction(key, uri_of(i, uri_chars), -1, IMAGE_BYTES, tuple(int(c) for c in indices),
                   tuple(float(x) for x in probabilities), float(probabilities[0]), float(entropy))
    return index.parse_entry(index.prediction_entry(p))


def _runner_kv_coder(pcoll, label):
    """The coder of a GroupByKey's input as Pipeline.to_runner_api makes it."""
    kv = coders.registry.get_coder(typehints.typehints.coerce_to_kv_type(pcoll.element_type, label))
    return coders.TupleCoder([kv.key_coder().as_deterministic_coder(label), kv.value_coder()])


def shuffles_in_graph(classes=10):
    """{GroupByKey full label: {"coder", "lifted"}} of both stages' graphs (not run). For a
    combiner's GroupByKey, "coder" is (key, accumulator) and "lifted" names the CombineFn."""
    with tempfile.TemporaryDirectory(prefix="shuffle-bytes-") as workdir:
        listing = os.path.join(workdir, "list.txt")
        open(listing, "w").close()  # ReadFromText checks at construction that the list exists
        argv = ["--teacher=/nonexistent", f"--input={listing}", f"--output={workdir}/out", "--per_class=10", "--dedup"]
        settings = options.resolve(options.parse(argv)[0], classes)
        document = {"schema_version": index.SCHEMA_VERSION, "run_id": "r", "input": listing,
                    "teacher": {"class_names": [str(c) for c in range(classes)], "teacher_id": "t"},
                    "settings": settings.identity_settings(), "runs": [{"settings": {}}],
                    "counts": {"labeled": 1, "rejected": 0}}
        source = sources.input_source(listing, "list", None, None, 1, sources.DEFAULT_MAX_BYTES)
        pipeline = beam.Pipeline()
        pipeline | "Predict" >> predict.Predict(workdir, "r", document, source, None, 1, 1, 1, 10_000, 1, 1)
        select.build(pipeline, settings, document)
        found, combines = {}, {}

        class Visitor(PipelineVisitor):
            def enter_composite_transform(self, node):  # a CombinePerKey is a composite around its GroupByKey
                self.visit_transform(node)

            def visit_transform(self, node):
                if isinstance(node.transform, beam.CombinePerKey):
                    combines[node.full_label] = node.transform.fn
                elif isinstance(node.transform, beam.GroupByKey):
                    coder = _runner_kv_coder(node.inputs[0], node.full_label)
                    fn = combines.get(node.full_label.rsplit("/", 1)[0])
                    if fn is not None:  # lifted: partial accumulators per key per bundle cross it
                        coder = coders.TupleCoder([coder.key_coder(), fn.get_accumulator_coder()])
                    found[node.full_label] = {"coder": coder, "lifted": fn and type(fn).__name__}

        pipeline.visit(Visitor())
    return found


def _mean(coder, items):
    items = list(items)
    return sum(len(coder.encode(item)) for item in items) / len(items)


def _per_held(coder, key, accumulator_of, values):
    """Bytes per input held in a lifted accumulator: the accumulator's growth per value."""
    empty = len(coder.encode((key, accumulator_of([]))))
    return (len(coder.encode((key, accumulator_of(values)))) - empty) / len(values)


def _bucket_record(bucket, num_buckets, parts):
    """A bucket's record as _PredictShard yields it: digest and [shard, live, labeled, rejected, dropped]."""
    keys = [buckets.unit_key(("file", uri_of(bucket * 7 + j, 49), None)) for j in range(3)]
    return {"digest": buckets.units_digest(keys),
            "parts": [[index.shard_name(bucket, num_buckets, index.shard_digest(f"run{j}", keys)), live, live, 0, None]
                      for j, live in enumerate(parts)]}


def index_json_bytes_per_bucket(num_buckets, parts):
    """index.json bytes per bucket (as index.write_index writes it), from buckets.index_document
    over 64 and 128 buckets whose records hold `parts` (live units per shard, oldest first)."""
    sizes = []
    for count in (64, 128):
        records_ = {b: _bucket_record(b, num_buckets, parts) for b in range(count)}
        document = buckets.index_document({"run_id": "r"}, None, records_, count, {"settings": {}})
        sizes.append(len(json.dumps(document, indent=1)) + 1)
    return (sizes[1] - sizes[0]) / 64


def measure_elements(uri_chars, top_k, classes, num_buckets, train_shards, graph):
    """Bytes per element of each shuffle, and per row of the files, with the graph's coders."""
    samples = [prediction_of(i, uri_chars, top_k, classes) for i in range(SAMPLES)]
    units = [("file", p.uri, None) for p in samples]  # a list line is not statted: no size
    coder = {label: info["coder"] for label, info in graph.items()}
    pre, post = "CombinePerKey(PreCombineFn)/GroupByKey", "CombinePerKey(PostCombineFn)/GroupByKey"
    ranked = [(p.confidence, p.identity) for p in samples]  # Select's RankKeys value
    ranked_sized = [(p.confidence, p.identity, p.input_bytes) for p in samples]  # SelectedBytes' RankKeys value
    shard_record = {"name": _bucket_record(1, num_buckets, [7935])["parts"][0][0], "bucket": 1, "of": num_buckets,
                    "run": 1, "units": 7935, "labeled": 7935, "rejected": 0, "dropped": []}
    line = records.rejection_line(samples[0].uri, "decode_error: cannot identify image file", "decode")
    to_list = coder["Predict/BucketRecords/BucketRecords/CombinePerKey/GroupByKey"]
    join = coder["Select/JoinSelection/CoGroupByKeyImpl/GroupByKey"]
    units_by_bucket = coder["Predict/GroupUnitsByBucket"]
    dedup_join = coder["Deduplicate/JoinSurvivor/CoGroupByKeyImpl/GroupByKey"]
    rows = [[buckets.unit_key(u), 1, 0] for u in units]  # a .units.json row, as _predict writes it

    def bucket_records(parts):
        return list(enumerate(_bucket_record(b, num_buckets, parts) for b in range(SAMPLES)))

    sizes = {
        "list_line": uri_chars + 1,
        "unit": _mean(units_by_bucket, [(buckets.bucket_of(u, num_buckets), u) for u in units]),
        "bucket_marker": _mean(units_by_bucket, [(b, None) for b in range(SAMPLES)]),
        "bucket_record": _per_held(to_list, None, lambda held: held, bucket_records([7935])),
        "bucket_record_two_shards": _per_held(to_list, None, lambda held: held, bucket_records([7935, 61])),
        # Reshuffle's random key (< 2**32) and the record with its reified timestamp (None) and pane.
        "shard_record": _mean(coder["SpreadShards/ReshufflePerKey/GroupByKey"],
                              [(3_000_000_000, (shard_record, None, PANE_INFO_UNKNOWN))]),
        # Hot-key fan-out: ((nonce, class), heap) then (class, (True, heap)); per entry held.
        "top_pre": _per_held(coder["Select/TopPerClass/" + pre], (3, 417), lambda v: (False, v), ranked),
        "top_post": _per_held(coder["Select/TopPerClass/" + post], 417, lambda v: (True, (False, v)), ranked),
        "sized_top_pre": _per_held(coder["CountTrainShards/SelectedBytes/TopPerClass/" + pre], (3, 417),
                                   lambda v: (False, v), ranked_sized),
        "sized_top_post": _per_held(coder["CountTrainShards/SelectedBytes/TopPerClass/" + post], 417,
                                    lambda v: (True, (False, v)), ranked_sized),
        "packed": sum(len(elements.pack(p)) for p in samples) / SAMPLES,
        "join_image": _mean(join, [(p.identity, ("images", elements.pack(p))) for p in samples]),
        "join_copies": _mean(join, [(p.identity, ("copies", 3)) for p in samples]),
        "train_element": _mean(coder["WriteRecords/GroupShards"],
                               [(records.shard_of(p.key, train_shards), elements.pack(p, 3)) for p in samples]),
        "rejection_line": len(line),
        "rejection_element": _mean(coder["WriteRejected/GroupShards"], [(records.shard_of(line.decode(), 128), line)]),
        "dedup_pre": _mean(coder["Deduplicate/SmallestUri/" + pre], [((3, p.key), (p.uri, 1)) for p in samples]),
        "dedup_post": _mean(coder["Deduplicate/SmallestUri/" + post], [(p.key, (True, (p.uri, 1))) for p in samples]),
        "dedup_entry": _mean(dedup_join, [(p.key, ("entries", elements.pack(p))) for p in samples]),
        "dedup_survivor": _mean(dedup_join, [(p.key, ("survivor", p.uri)) for p in samples]),
        # On disk: the entry in its TFRecord frame (16 B: length, its CRC, the data's CRC).
        "index_entry": sum(len(records.tfrecord_frame(index.prediction_entry(p))) for p in samples) / SAMPLES,
        "units_row": (len(json.dumps({"units": rows}, sort_keys=True)) - len(json.dumps({"units": []}))) / len(rows),
        "units_file": len(json.dumps({"units": []}, sort_keys=True)),
        "train_record_labels": sum(len(records.tfrecord_frame(records.to_example(p, b"\0" * IMAGE_BYTES, 1)))
                                   - IMAGE_BYTES for p in samples[:8]) / 8,
        "index_json_per_bucket": index_json_bytes_per_bucket(num_buckets, [7935]),
        "index_json_per_bucket_two_shards": index_json_bytes_per_bucket(num_buckets, [7935, 61]),
    }
    # What a portable runner adds around each element (not in the totals): the windowed value's
    # header (timestamp, global window, pane) and a length prefix per non-standard component.
    windowed = coders.WindowedValueCoder(coders.BytesCoder(), GlobalWindowCoder())
    sizes["runner_header"] = len(windowed.encode(WindowedValue(b"", MIN_TIMESTAMP, [GlobalWindow()])))
    return {name: round(value, 1) for name, value in sizes.items()}

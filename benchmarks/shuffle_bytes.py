"""Bytes through every shuffle of both stages at 130M images, measured with Beam's own coders.

  python -m benchmarks.shuffle_bytes [--images=130000000] [--added=1000000] [--uri_chars=49]
      [--top_k=5] [--per_class=130000 --classes=1000] [--images_per_prediction_shard=10000]
      [--unique_kept=130000000,40000000] [--rejected=0] [--output=out/shuffle_bytes.json]

Nothing runs: both stages' graphs are built (Predict, select.build with --dedup) and walked, so
every GroupByKey the runner sees is listed with the coder Beam gives its input (untyped KV:
FastPrimitivesCoder, key made deterministic, as Pipeline.to_runner_api does). A combiner is
lifted: (key, accumulator) crosses, in its accumulator coder, measured per input held. Elements
come from the project's own functions (a Prediction read back from an index entry, elements.pack,
unit tuples, bucket records, rejection lines): bytes are M (measured), counts A (assumed, per
row). A GroupByKey no row accounts for is listed as "unaccounted" (the test keeps that empty).
"""

import argparse
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

from pipeline import (buckets, elements, index, options, predict, records, select, selection, sources,  # noqa: E402
                      write)
from pipeline.elements import Prediction  # noqa: E402

IMAGE_BYTES = 110_000  # A: the input size
TARGET_SHARD_MB = 256  # --target_shard_mb's default
SAMPLES = 64  # elements measured per row: sizes vary only with varints (bucket ids, counts)
GB = 1e9


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
        # A list line reaches its path once: the lifted accumulator (times, preferred reach).
        "merge_reaches": _mean(coder["Predict/ListInputs/MergeReachesPerPath/GroupByKey"],
                               [(u[1], (1, (sources.LITERAL, None))) for u in units]),
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
        "shard_marker": _mean(coder["WriteRecords/GroupShards"], [(s, None) for s in range(SAMPLES)]),
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


# GroupByKeys of per-bundle combiners whose accumulators do not grow with the images (counts,
# sums, per-class statistics, ToList of the file names): bounded by bundles x classes.
SMALL = ("Facts/", "Predict/CountUnits/", "CountTrainShards/SelectedBytes/Sum/")


def _row(stage, label, element, size, count, assumption):
    return {"stage": stage, "shuffle": label, "element": element, "bytes": size, "elements": int(count),
            "assumption": assumption, "gb": round(size * count / GB, 2)}


def stage1_rows(size, listed, num_buckets, changed=0):
    """Stage 1's shuffles over `listed` list lines; `changed` buckets get a second shard record."""
    to_list = "Predict/BucketRecords/BucketRecords/CombinePerKey/GroupByKey"
    return [_row(1, "Predict/ListInputs/MergeReachesPerPath/GroupByKey", "(uri, (1, ('literal', None))) accumulator",
                 size["merge_reaches"], listed, "each line a distinct path: one accumulator per path (lifted)"),
            _row(1, "Predict/GroupUnitsByBucket", "(bucket, ('file', uri, None))", size["unit"], listed, "per unit"),
            _row(1, "Predict/GroupUnitsByBucket", "(bucket, None)", size["bucket_marker"], num_buckets, "per bucket"),
            _row(1, to_list, "(bucket, {digest, parts}) in ToList", size["bucket_record"], num_buckets - changed,
                 "one per bucket")] + ([_row(1, to_list, "the same, 2 shards", size["bucket_record_two_shards"],
                                             changed, "buckets with new units")] if changed else [])


def stage2_rows(size, labeled, shards, unique_kept, train_shards, rejected, per_class, classes):
    """Stage 2's shuffles: `labeled` entries, all above threshold (worst case), `unique_kept` kept."""
    held = min(labeled, selection.HOT_KEY_FANOUT * classes * per_class)  # a (sub-)key's heap keeps <= per_class
    bound = "<= each input once per shuffle (lifted heaps hold subsets)"
    rows = [
        _row(2, "SpreadShards/ReshufflePerKey/GroupByKey", "(random int, (shard record, None))",
             size["shard_record"], shards, "one per index shard"),
        _row(2, "Select/TopPerClass/CombinePerKey(PreCombineFn)/GroupByKey", "(confidence, identity) in a heap",
             size["top_pre"], labeled, "every entry above threshold; " + bound),
        _row(2, "Select/TopPerClass/CombinePerKey(PostCombineFn)/GroupByKey", "the same, after fan-out",
             size["top_post"], held, f"<= min(entries, {selection.HOT_KEY_FANOUT} x classes x per_class)"),
        _row(2, "Select/JoinSelection/CoGroupByKeyImpl/GroupByKey", "(identity, ('images', pack(p)))",
             size["join_image"], labeled, "every entry above threshold"),
        _row(2, "Select/JoinSelection/CoGroupByKeyImpl/GroupByKey", "(identity, ('copies', n))",
             size["join_copies"], unique_kept, "one per unique kept image"),
        _row(2, "CountTrainShards/SelectedBytes/TopPerClass/CombinePerKey(PreCombineFn)/GroupByKey",
             "(confidence, identity, input_bytes) in a heap", size["sized_top_pre"], labeled, bound),
        _row(2, "CountTrainShards/SelectedBytes/TopPerClass/CombinePerKey(PostCombineFn)/GroupByKey",
             "the same, after fan-out", size["sized_top_post"], held, "as Select's"),
        _row(2, "WriteRecords/GroupShards", "(shard, pack(p, copies))", size["train_element"], unique_kept,
             "one per unique kept image, not per copy"),
        _row(2, "WriteRecords/GroupShards", "(shard, None)", size["shard_marker"], train_shards, "one per shard"),
        _row(2, "WriteRejected/GroupShards", "(shard, JSON line)", size["rejection_element"], rejected,
             "--rejected lines"),
    ]
    # --dedup only. A: every content unique (one accumulator per entry, no hot key, one survivor each).
    smallest, join = "Deduplicate/SmallestUri/CombinePerKey", "Deduplicate/JoinSurvivor/CoGroupByKeyImpl/GroupByKey"
    specs = ((smallest + "(PreCombineFn)/GroupByKey", "((nonce, key), (uri, 1))", "dedup_pre"),
             (smallest + "(PostCombineFn)/GroupByKey", "(key, (True, (uri, 1)))", "dedup_post"),
             (join, "(key, ('entries', pack(p)))", "dedup_entry"), (join, "(key, ('survivor', uri))", "dedup_survivor"))
    dedup = [_row(2, label, element, size[name], labeled, "--dedup only") for label, element, name in specs]
    return rows, dedup


def _gb(rows):
    return round(sum(row["gb"] for row in rows), 1)


def measure(images=130_000_000, added=1_000_000, uri_chars=49, top_k=5, per_class=130_000, classes=1000,
            images_per_prediction_shard=10_000, unique_kept=(130_000_000, 40_000_000), rejected=0, graph=None):
    """Every number of the plan at these sizes: a dict (the JSON that --output writes)."""
    graph = graph or shuffles_in_graph()
    num_buckets = buckets.bucket_count(images, images_per_prediction_shard)
    written = per_class * classes  # A: --balance=duplicate fills every class to per_class records
    train_shards = write.train_shard_count(written * IMAGE_BYTES, TARGET_SHARD_MB)
    size = measure_elements(uri_chars, top_k, classes, num_buckets, train_shards, graph)
    stage1 = stage1_rows(size, images, num_buckets)
    rows_of = {row["shuffle"] for row in stage1}
    index_bytes = images * size["index_entry"]
    index_json = num_buckets * size["index_json_per_bucket"]
    cases = []
    for kept in unique_kept:
        kept = min(kept, images)
        rows, dedup = stage2_rows(size, images, num_buckets, kept, train_shards, rejected, per_class, classes)
        rows_of |= {row["shuffle"] for row in rows + dedup}
        cases.append({"unique_kept": kept, "records_written": written, "stage2": rows, "dedup": dedup,
                      "stage2_gb": _gb(rows), "dedup_gb": _gb(dedup),
                      "bytes_read_stage2": {"index": index_bytes, "index_json": index_json,
                                            "images": kept * IMAGE_BYTES}})
    unaccounted = sorted(label for label in graph if label not in rows_of and not label.startswith(SMALL))
    # The rerun over images + added lines into the same index.
    listed = images + added
    rerun_buckets = buckets.bucket_count(listed, images_per_prediction_shard, num_buckets)
    # A: URIs hash uniformly; a bucket is unchanged only if none of the new units lands in it.
    changed = rerun_buckets if rerun_buckets != num_buckets else round(
        rerun_buckets * (1 - (1 - 1 / rerun_buckets) ** added))
    rerun1 = stage1_rows(size, listed, rerun_buckets, changed)
    rerun2, _ = stage2_rows(size, listed, num_buckets + changed, min(unique_kept[0], listed), train_shards,
                            rejected, per_class, classes)
    incremental = {
        "listed": listed, "num_buckets": rerun_buckets, "changed_buckets": changed, "new_shards": changed,
        "index_shards_after": num_buckets + changed, "stage1": rerun1, "stage1_gb": _gb(rerun1),
        "stage2": rerun2, "stage2_gb": _gb(rerun2),
        "read": {"list": listed * size["list_line"], "index_json": index_json,
                 # plan_bucket reads the unit list of every shard of a changed bucket (after a doubling,
                 # each old shard's list is read by each of its halves)
                 "units_json": (images * size["units_row"] + num_buckets * size["units_file"]) * changed / num_buckets,
                 "images": added * IMAGE_BYTES},
        "written": {"index_entries": added * size["index_entry"],
                    "units_json": added * size["units_row"] + changed * size["units_file"],
                    "index_json": changed * size["index_json_per_bucket_two_shards"]
                    + (rerun_buckets - changed) * size["index_json_per_bucket"]},
        "stage2_read": {"index": listed * size["index_entry"], "images": min(unique_kept[0], listed) * IMAGE_BYTES},
    }
    return {
        "parameters": dict(images=images, added=added, uri_chars=uri_chars, top_k=top_k, per_class=per_class,
                           classes=classes, rejected=rejected, image_bytes=IMAGE_BYTES, target_shard_mb=TARGET_SHARD_MB,
                           images_per_prediction_shard=images_per_prediction_shard),
        "coders": {label: {"coder": str(info["coder"]), "lifted": info["lifted"]} for label, info in graph.items()},
        "unaccounted": unaccounted, "small": sum(label.startswith(SMALL) for label in graph), "sizes": size,
        "num_buckets": num_buckets, "train_shards": train_shards,
        "stage1": stage1, "stage1_gb": _gb(stage1), "cases": cases,
        "per_image": {"stage1": size["merge_reaches"] + size["unit"],
                      "stage2": size["top_pre"] + size["top_post"] + size["sized_top_pre"] + size["sized_top_post"]
                      + size["join_image"] + size["join_copies"] + size["train_element"]},
        "files": {"index_entries": index_bytes, "units_json": images * size["units_row"]
                  + num_buckets * size["units_file"], "index_json": index_json,
                  "train": written * (IMAGE_BYTES + size["train_record_labels"]),
                  "rejected": rejected * size["rejection_line"]},
        "bytes_read_stage1": {"list": images * size["list_line"], "images": images * IMAGE_BYTES},
        "incremental": incremental,
    }


def _human(n):
    unit, scale = next(((u, s) for u, s in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)) if n >= s), ("B", 1))
    return f"{n / scale:.3g} {unit}"


def _short(label):
    for long, short in (("/CombinePerKey(PreCombineFn)/GroupByKey", " pre-combine"),
                        ("/CombinePerKey(PostCombineFn)/GroupByKey", " post-combine"),
                        ("/CoGroupByKeyImpl/GroupByKey", ""), ("/BucketRecords/CombinePerKey/GroupByKey", ""),
                        ("/ReshufflePerKey/GroupByKey", ""), ("/GroupByKey", ""), ("CountTrainShards/", "")):
        label = label.replace(long, short)
    return label


def _table(rows):
    lines = [f"  {'shuffle':44} {'element':44} {'B (M)':>6} {'elements (A)':>13} {'GB':>6}"]
    lines += [f"  {_short(r['shuffle']):44} {r['element'][:44]:44} {r['bytes']:6.1f} {r['elements']:13,d} "
              f"{r['gb']:6.1f}"
              for r in rows]
    return lines


def report(result):
    p, s, inc = result["parameters"], result["sizes"], result["incremental"]
    out = [f"{p['images']:,} images, {p['uri_chars']}-char gs:// URIs, top-{p['top_k']}, {p['classes']} classes x "
           f"{p['per_class']:,} per class; B = measured with Beam's coders, elements = assumed",
           f"buckets {result['num_buckets']:,}; train shards {result['train_shards']:,} "
           f"(train_shard_count({p['per_class'] * p['classes']:,} x {p['image_bytes']:,} B, {p['target_shard_mb']}))",
           f"GroupByKeys in the two graphs: {len(result['coders'])}, of per-bundle combiners that hold no "
           f"per-image state (Facts/*, CountUnits, Sum): {result['small']}; "
           f"unaccounted: {result['unaccounted'] or 'none'}",
           f"stage 1 shuffles ({result['stage1_gb']} GB, {result['per_image']['stage1']:.0f} B per image):",
           *_table(result["stage1"])]
    for case in result["cases"]:
        out += [f"stage 2 shuffles, {case['unique_kept']:,} unique kept -> {case['records_written']:,} records "
                f"({case['stage2_gb']} GB; --dedup adds {case['dedup_gb']} GB); it reads the index "
                f"{_human(case['bytes_read_stage2']['index'])} + images {_human(case['bytes_read_stage2']['images'])}:",
                *_table(case["stage2"] + case["dedup"])]
    f = result["files"]
    out += [f"per image through stage 2's shuffles (all above threshold, all kept): "
            f"{result['per_image']['stage2']:.0f} B",
            f"index entry on disk {s['index_entry']:.0f} B (= URI + {s['index_entry'] - p['uri_chars']:.0f}); packed "
            f"{s['packed']:.0f} B; .units.json row {s['units_row']:.0f} B; index.json "
            f"{s['index_json_per_bucket']:.0f} B"
            f" per bucket; train record = image + {s['train_record_labels']:.0f} B; runner header +"
            f"{s['runner_header']} B per element (not in totals)",
            f"written by stage 1: index {_human(f['index_entries'])}, .units.json {_human(f['units_json'])}, "
            f"index.json {_human(f['index_json'])}; by stage 2: train {_human(f['train'])}",
            f"read by stage 1: list {_human(result['bytes_read_stage1']['list'])} + images "
            f"{_human(result['bytes_read_stage1']['images'])}"]
    out += [f"rerun over {inc['listed']:,} lines ({p['added']:,} new): {inc['changed_buckets']:,} of "
            f"{inc['num_buckets']:,} buckets changed, {inc['new_shards']:,} new shards -> "
            f"{inc['index_shards_after']:,}",
            f"  stage 1 shuffles {inc['stage1_gb']} GB; read: list {_human(inc['read']['list'])}, .units.json "
            f"{_human(inc['read']['units_json'])}, index.json {_human(inc['read']['index_json'])}, images "
            f"{_human(inc['read']['images'])}; written: entries {_human(inc['written']['index_entries'])}, .units.json "
            f"{_human(inc['written']['units_json'])}, index.json {_human(inc['written']['index_json'])}",
            f"  stage 2 (full selection): shuffles {inc['stage2_gb']} GB; read: index "
            f"{_human(inc['stage2_read']['index'])} + images {_human(inc['stage2_read']['images'])}"]
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, default in (("images", 130_000_000), ("added", 1_000_000), ("uri_chars", 49), ("top_k", 5),
                          ("per_class", 130_000), ("classes", 1000), ("images_per_prediction_shard", 10_000),
                          ("rejected", 0)):  # rejected: rejection lines (the index's rejections)
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--unique_kept", default="130000000,40000000", help="unique kept images, one case each")
    parser.add_argument("--output", default=None, help="also write every number here, as JSON")
    args = parser.parse_args(argv)
    kept = tuple(int(u) for u in args.unique_kept.split(","))
    result = measure(args.images, args.added, args.uri_chars, args.top_k, args.per_class, args.classes,
                     args.images_per_prediction_shard, kept, args.rejected)
    print(report(result))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()

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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.shuffle_elements import IMAGE_BYTES, measure_elements, shuffles_in_graph  # noqa: E402
from pipeline import buckets, selection, write  # noqa: E402

TARGET_SHARD_MB = 256  # --target_shard_mb's default
GB = 1e9


# GroupByKeys of per-bundle combiners whose accumulators do not grow with the images (counts,
# sums, per-class statistics, ToList of the file names): bounded by bundles x classes.
SMALL = ("Facts/", "Predict/CountUnits/", "CountTrainShards/SelectedBytes/Sum/")


def _row(stage, label, element, size, count, assumption):
    return {"stage": stage, "shuffle": label, "element": element, "bytes": size, "elements": int(count),
            "assumption": assumption, "gb": round(size * count / GB, 2)}


def stage1_rows(size, listed, num_buckets, changed=0):
    """Stage 1's shuffles over `listed` list lines; `changed` buckets get a second shard record."""
    to_list = "Predict/BucketRecords/BucketRecords/CombinePerKey/GroupByKey"
    return [_row(1, "Predict/GroupUnitsByBucket", "(bucket, ('file', uri, None))", size["unit"], listed, "per unit"),
            _row(1, "Predict/GroupUnitsByBucket", "(bucket, None)", size["bucket_marker"], num_buckets, "per bucket"),
            _row(1, to_list, "(bucket, {digest, parts}) in ToList", size["bucket_record"], num_buckets - changed,
                 "one per bucket")] + ([_row(1, to_list, "the same, 2 shards", size["bucket_record_two_shards"],
                                             changed, "buckets with new units")] if changed else [])


def stage2_rows(size, labeled, shards, unique_kept, rejected, per_class, classes):
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
        rows, dedup = stage2_rows(size, images, num_buckets, kept, rejected, per_class, classes)
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
    rerun2, _ = stage2_rows(size, listed, num_buckets + changed, min(unique_kept[0], listed), rejected,
                            per_class, classes)
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
        "per_image": {"stage1": size["unit"],
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

"""benchmarks/shuffle_bytes.py on small sizes: its structure, and the facts the README's 130M plan
rests on that must not drift silently (the coders Beam picks, the packed element's size, the
bucket count at 130M). No timings: nothing here runs a pipeline."""

import typing

from apache_beam import coders

from benchmarks import shuffle_bytes, shuffle_elements
from pipeline import buckets, elements, index, records, write


def test_shuffle_bytes_accounts_for_every_shuffle_with_beams_own_coders():
    result = shuffle_bytes.measure(images=100_000, added=1_000, per_class=100, classes=10,
                                   images_per_prediction_shard=1_000, unique_kept=(1_000, 500))
    # Every GroupByKey of both graphs is a row, or a combiner holding no per-image state.
    assert result["unaccounted"] == []
    assert "Predict/GroupUnitsByBucket" in result["coders"] and "Select/JoinSelection/CoGroupByKeyImpl/GroupByKey" \
        in result["coders"]
    # An untyped PCollection's elements cross a shuffle in FastPrimitivesCoder (the key made deterministic).
    assert type(coders.registry.get_coder(typing.Any)) is coders.FastPrimitivesCoder
    assert result["coders"]["Predict/GroupUnitsByBucket"]["coder"].startswith("TupleCoder[DeterministicFastPrimitives")
    assert result["coders"]["Select/TopPerClass/CombinePerKey(PreCombineFn)/GroupByKey"]["lifted"] == "PreCombineFn"

    assert result["num_buckets"] == 128  # 100,000 units at <= 1,000 per bucket, a power of two
    assert result["train_shards"] == write.train_shard_count(100 * 10 * shuffle_bytes.IMAGE_BYTES, 256)
    for row in result["stage1"] + result["cases"][0]["stage2"] + result["cases"][0]["dedup"]:
        assert row["bytes"] > 0 and row["gb"] == round(row["bytes"] * row["elements"] / 1e9, 2)
    assert [case["unique_kept"] for case in result["cases"]] == [1_000, 500]
    incremental = result["incremental"]
    assert incremental["listed"] == 101_000 and 0 < incremental["changed_buckets"] <= incremental["num_buckets"]
    assert incremental["read"]["images"] == 1_000 * shuffle_bytes.IMAGE_BYTES

    # The sizes for a 49-character gs:// URI and top-5, exactly as the project's functions give them.
    prediction = shuffle_elements.prediction_of(7, 49, 5, 10)
    assert len(prediction.uri) == 49 and prediction.uri.startswith("gs://")
    packed = elements.pack(prediction)
    assert len(packed) == 1 + 32 + 21 + 49 + 4 * (2 * 5 + 2) == result["sizes"]["packed"] == 151
    assert elements.unpack(packed) == (prediction, 1)
    entry = records.tfrecord_frame(index.prediction_entry(prediction))
    assert abs(len(entry) - result["sizes"]["index_entry"]) <= 4  # varints of the class indices vary


def test_the_bucket_count_at_130m_is_a_power_of_two_of_at_most_10000_units():
    count = buckets.bucket_count(130_000_000, 10_000)
    assert count == 16_384 and count & (count - 1) == 0 and 130_000_000 / count <= 10_000
    assert buckets.bucket_count(131_000_000, 10_000, count) == count  # 1M more does not double it

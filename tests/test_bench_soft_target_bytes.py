"""benchmarks/soft_target_bytes.py: the bytes of a soft target come from the project's own
serializers, so they follow the class count as protobuf encodes it."""

import pytest

from benchmarks import soft_target_bytes


def test_full_distributions_cost_four_bytes_a_class_and_the_top_k_does_not_grow_with_classes():
    small, large = soft_target_bytes.measure(classes=10), soft_target_bytes.measure(classes=1000)
    for name, size in small["top_k_only"].items():  # 5 indices and 5 probabilities, whatever the classes;
        # an index of 128 or more takes a second varint byte
        assert size <= large["top_k_only"][name] <= size + 5, name
    for name in ("index_entry", "packed_element", "record_besides_image"):
        added = large["full_float32"][name] - large["top_k_only"][name]
        # 4 bytes per float32 probability, plus the feature's name, headers and lengths.
        assert 4 * 1000 <= added <= 4 * 1000 + 48, (name, added)
    assert 2 * 1000 <= large["full_float16_bytes_feature_adds"] <= 2 * 1000 + 40
    assert large["float16_max_error"] < 1e-3 and 0 < large["top_k_mass"] < 1


def test_top_k_is_checked_against_the_class_count(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["soft_target_bytes", "--classes=3", "--top_k=5"])
    with pytest.raises(SystemExit):
        soft_target_bytes.main()
    assert "--top_k=5 must be between 1 and --classes=3" in capsys.readouterr().err

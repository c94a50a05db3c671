"""pipeline.file_reads: bounded reads of local files, whatever their size says."""

import io

import pytest

from pipeline import file_reads


class _CountingReader(io.BufferedReader):
    """A real buffered file that records how many bytes each read asked for."""

    def __init__(self, raw):
        super().__init__(raw)
        self.asked = []

    def read(self, size=-1):
        self.asked.append(size)
        return super().read(size)


def _reader(path):
    return _CountingReader(io.FileIO(path, "rb"))


@pytest.mark.parametrize("size", [0, 1, 1000, (64 << 10) + 7, 3 * (1 << 20) + 5])
@pytest.mark.parametrize("hinted", [True, False])
def test_reads_every_byte_and_asks_little_past_the_end(tmp_path, size, hinted):
    path = tmp_path / "image.bin"
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    path.write_bytes(data)
    with _reader(path) as handle:
        assert file_reads._read_bounded(handle, 16 << 20, size if hinted else None) == data
    # The read that finds the end asks for _FIRST_CHUNK at most: never an 8 MB buffer per image.
    assert handle.asked[-1] <= file_reads._FIRST_CHUNK + 1
    assert max(handle.asked) <= max(file_reads._FIRST_CHUNK, 2 * size + 2)


def test_a_file_longer_than_its_hint_is_read_whole(tmp_path):
    path = tmp_path / "grew.bin"
    path.write_bytes(b"x" * 200_000)
    with _reader(path) as handle:
        assert len(file_reads._read_bounded(handle, 1 << 20, size_hint=10)) == 200_000


def test_reading_stops_one_byte_past_max_bytes(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"y" * 300_000)
    with _reader(path) as handle:
        assert len(file_reads._read_bounded(handle, 100_000)) == 100_001
    with pytest.raises(file_reads.InputRejected, match="too_large"):
        file_reads.read_file(str(path), 100_000)
    assert file_reads.read_file(str(path), 300_000) == b"y" * 300_000

"""benchmarks/storage_reads.py on a few images: the figures it reports and that every path read
every byte right (its timings are not checked: they depend on the machine)."""

from benchmarks import storage_reads


def test_the_storage_reads_bench_reads_every_byte(tmp_path):
    result = storage_reads.run(images=50, threads=8, workdir=str(tmp_path))
    assert result["images"] == 50 and result["threads"] == 8 and result["bytes"] > 50 * 1000
    paths = result["paths"]
    assert set(paths) == {"local", "beam_filesystems", "shared_client"}
    assert all(path["bytes_match"] for path in paths.values())
    assert all(path["images_per_s"] > 0 and path["cpu_ms_per_image"] > 0 for path in paths.values())
    assert paths["shared_client"]["requests_per_image"] == 1
    assert paths["beam_filesystems"]["requests_per_image"] >= 2, "a metadata request before the bytes"
    assert paths["shared_client"]["clients_built"] == 1
    assert result["shared_over_beam"] > 0
    assert [figure for figure, _ in storage_reads.rows(result)][-1] == "(f) image reads, gs:// new over old"

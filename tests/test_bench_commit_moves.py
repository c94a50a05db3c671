"""benchmarks/commit_moves.py on a few shards: every staged file arrives with its size and none
is left in staging, serially and with chunks in flight (its timings are not checked: they
depend on the machine)."""

from benchmarks import commit_moves
from pipeline import commit


def test_the_commit_moves_bench_publishes_every_file(monkeypatch):
    monkeypatch.setattr(commit, "CHUNK_FILES", 10)  # 50 shards in 5 chunks: the parallel side runs on threads
    result = commit_moves.run(shards=50, concurrency=4, latencies_ms=(0, 20))
    assert (result["shards"], result["chunk_files"], result["concurrency"]) == (50, 10, 4)
    assert [run["latency_ms"] for run in result["runs"]] == [0, 20]
    for run in result["runs"]:
        for side in ("serial", "parallel"):
            assert run[side]["sizes_match"] and run[side]["left_in_staging"] == 0, (run["latency_ms"], side)
            assert run[side]["seconds"] > 0
        assert run["speedup"] > 0
    figures = [figure for figure, _ in commit_moves.rows(result)]
    assert figures == ["(h) commit moves, 50 shards on the GCS emulator, loopback: 1 vs 4 chunks of 10 in flight",
                       "(h) commit moves, 50 shards on the GCS emulator, +20 ms a request (modelled): 1 vs 4 "
                       "chunks of 10 in flight"]

"""pipeline.fetch: how many reads a stage-2 writer keeps in flight, from where its inputs are."""

import os

import pytest

from pipeline import fetch, sources


def _source(input_format):
    return sources.InputSource("spec", input_format, "image/encoded", None, 1, 1 << 20)


@pytest.mark.parametrize("uri", ["gs://bucket/images/a.jpg", "s3://bucket/a.png"])
def test_object_store_inputs_keep_many_reads_in_flight_by_default(uri):
    assert fetch.parallel_reads(_source("list"), 0, uri) == fetch.REMOTE_FETCH_THREADS


@pytest.mark.parametrize("uri", ["/data/images/a.png", "relative/a.png", ""])
def test_local_files_are_read_by_one_thread_per_core_by_default(uri):
    assert fetch.parallel_reads(_source("images"), 0, uri) == os.cpu_count()


@pytest.mark.parametrize("uri", ["/data/a.png", "gs://bucket/a.png"])
def test_the_flag_wins_wherever_the_inputs_are(uri):
    assert fetch.parallel_reads(_source("list"), 5, uri) == 5


def test_tfds_input_is_read_in_the_writers_own_thread():
    assert fetch.parallel_reads(_source("tfds"), 0, "mnist:train[0]") == 0
    assert fetch.parallel_reads(_source("tfds"), 5, "mnist:train[0]") == 0

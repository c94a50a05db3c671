"""pipeline.commit: publishing survives a failure at any file operation, retries are
idempotent, and two jobs writing one OUT_DIR never mix, on local disk and on gs:// (the GCS
emulator of tests/conftest.py).

The Commit DoFn is driven directly, as Beam would (a retry runs `process` again on the same
element); its file operations go through `pipeline.commit.FileSystems`, which the tests
replace with a proxy that fails, or pauses, at a chosen operation.
"""

import json
import os
import threading

import pytest
from apache_beam.io.filesystems import FileSystems

import test_label_gcs
from pipeline import commit, label, options, records, select

BUCKET = test_label_gcs.BUCKET  # the bucket conftest's gcs_emulator fixture creates for this module
RUN_ID = "0123456789abcdef"  # two jobs with identical settings share it
CLASS_NAMES = ["a", "b"]


class Injected(IOError):
    """The failure a test injects into a file operation."""


def _run_files(tag, num_shards, rejected=2):
    """(files {name: bytes}, facts) of a run whose every byte names `tag`."""
    files, train = {}, []
    for index in range(num_shards):
        name = records.shard_name(records.TRAIN_PREFIX, index, num_shards, records.TRAIN_SUFFIX)
        payloads = [f"{tag}/{index}/{j}".encode() for j in range(2 + index)]
        files[name] = b"".join(records.tfrecord_frame(payload) for payload in payloads)
        train.append((name, len(payloads)))
    name = records.shard_name(records.REJECTED_PREFIX, 0, 1, records.REJECTED_SUFFIX)  # every run has this name
    files[name] = b"".join(records.rejection_line(f"{tag}/bad{j}", "undecodable: x", "decode") for j in range(rejected))
    written = sum(count for _, count in train)
    facts = {"read": written + rejected, "rejected": rejected, "labeled": written, "below_threshold": 0,
             "over_cap": 0, "kept": written, "duplicates": 0, "unavailable": 0, "unavailable_copies": 0,
             "train_files": train,
             "rejected_files": [(name, rejected)], "rejected_by_reason": {"undecodable": rejected},
             "confidence_histogram": [0] * 100, "entropy_histogram": [0] * 50, "most_confident": {},
             "least_confident": {}}
    for fact in ("class_labeled", "class_kept", "class_duplicates", "class_over_cap", "class_below_threshold",
                 "class_unavailable", "class_unavailable_copies", "class_mean_confidence",
                 "class_confidence_quantiles"):
        facts[fact] = {}
    return files, facts


def _write(path, data):
    with FileSystems.create(path) as handle:
        handle.write(data)


def _read(path):
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return handle.read()


def _tree(root):
    """Every file under `root`, relative to it."""
    if root.startswith("gs://"):
        from google.cloud import storage

        bucket, prefix = root[len("gs://"):].split("/", 1)
        return sorted(blob.name[len(prefix) + 1:] for blob in storage.Client().list_blobs(bucket, prefix=prefix + "/"))
    return sorted(os.path.relpath(os.path.join(folder, name), root)
                  for folder, _, names in os.walk(root) for name in names)


def _commit_old_run(root):
    """OUT_DIR holding a committed run (3 shards, as an older version of the job wrote it):
    returns its files, and its fingerprint as a job starting now would record it."""
    files, facts = _run_files("old", 3)
    for name, data in files.items():
        _write(FileSystems.join(root, name), data)
    _write(FileSystems.join(root, commit.STATS_FILE), b"{}\n")
    listed = {kind: [name for name, _ in facts[f"{kind}_files"]] for kind in ("train", "rejected")}
    manifest = {"schema_version": 1, "run_id": "old", "files": listed}
    _write(FileSystems.join(root, commit.MANIFEST_FILE), json.dumps(manifest).encode())
    return files, commit.manifest_fingerprint(root)


class Job:
    """One labeling job at its commit: its staged files, and its Commit DoFn."""

    def __init__(self, root, tag, num_shards, previous, overwrite):
        self.root, self.tag = root, tag
        self.nonce = commit.new_run_nonce()
        self.files, self.facts = _run_files(tag, num_shards)
        self.staging = commit.staging_dir(root, RUN_ID, self.nonce)
        for name, data in self.files.items():
            _write(FileSystems.join(self.staging, name), data)
        self.dofn = commit.Commit(root, self.staging, {"schema_version": 1, "run_id": RUN_ID}, CLASS_NAMES,
                                  self.nonce, previous, overwrite)

    def commit(self):
        return list(self.dofn.process(dict(self.facts)))


def assert_consistent(root, runs):
    """What a reader may rely on at any instant: no manifest, or one that lists exactly one
    run's files, each there with that run's bytes. Returns the run's key (None: no manifest)."""
    data = _read(FileSystems.join(root, commit.MANIFEST_FILE))
    if data is None:
        return None
    manifest = json.loads(data)
    key = manifest.get("run_nonce") or manifest["run_id"]
    listed = manifest["files"]["train"] + manifest["files"]["rejected"]
    assert sorted(listed) == sorted(runs[key]), f"the manifest of {key} does not list its files"
    for name in listed:
        assert _read(FileSystems.join(root, name)) == runs[key][name], f"{name} does not hold {key}'s bytes"
    return key


def assert_published(root, job, others=()):
    """`job`'s run is committed in `root` and OUT_DIR holds nothing else of any run."""
    assert assert_consistent(root, {job.nonce: job.files}) == job.nonce
    manifest = json.loads(_read(FileSystems.join(root, commit.MANIFEST_FILE)))
    # Every train shard's count, which the student sizes its input from, is that shard's records.
    assert manifest["files"]["train_counts"] == [
        len(list(records.read_tfrecords(FileSystems.join(root, name)))) for name in manifest["files"]["train"]]
    assert manifest["counts"]["written"] == sum(manifest["files"]["train_counts"])
    assert manifest["counts"]["rejected"] == sum(
        _read(FileSystems.join(root, name)).count(b"\n") for name in manifest["files"]["rejected"])
    left_staging = {other.staging[len(root) + 1:] for other in others}
    top = [name for name in _tree(root) if not name.split("/")[0] in left_staging]
    assert top == sorted([*job.files, commit.MANIFEST_FILE, commit.STATS_FILE]), top


class FaultyFileSystems:
    """Stands in for FileSystems inside pipeline.commit. Counts the file operations; the one
    numbered `fail_at` fails: "before" it does anything, "after" it did everything (a lost
    reply), or "partial": a batch rename/delete does its first file only and a create writes
    half its bytes (then the `with` closes the file, as a crashing worker's would)."""

    OPERATIONS = ("create", "rename", "copy", "delete", "match", "exists", "open")
    CHANGES = ("create", "rename", "copy", "delete")

    def __init__(self, fail_at=None, mode="before", before_each=None):
        self.fail_at, self.mode, self.before_each = fail_at, mode, before_each
        self.count, self.failed, self.log = 0, None, []
        self._lock = threading.Lock()  # the commit moves and deletes chunks from several threads

    def __getattr__(self, name):
        real = getattr(FileSystems, name)
        if name not in self.OPERATIONS:
            return real

        def operation(*args, **kwargs):
            with self._lock:
                index, self.count = self.count, self.count + 1
                self.log.append(name)
            if self.before_each:
                self.before_each(index, name)
            if index != self.fail_at:
                return real(*args, **kwargs)
            self.failed = (index, name, self.mode)
            if self.mode == "before":
                raise Injected(f"injected before {name} #{index}")
            if name == "create":
                return _FailingHandle(real(*args, **kwargs), self.mode == "partial")
            if self.mode == "partial" and name in ("rename", "copy", "delete") and len(args[0]) > 1:
                real(*(arg[:1] for arg in args))
                raise Injected(f"injected after the first file of {name} #{index}")
            real(*args, **kwargs)
            raise Injected(f"injected after {name} #{index}")

        return operation


class _FailingHandle:
    def __init__(self, handle, partial):
        self._handle, self._partial = handle, partial

    def __enter__(self):
        return self

    def write(self, data):
        if self._partial:
            self._handle.write(data[:len(data) // 2])
            raise Injected("injected in the middle of a write")
        self._handle.write(data)

    def __exit__(self, *exc):
        self._handle.close()
        if exc[0] is None:
            raise Injected("injected after a complete write")


@pytest.fixture(params=["local", "gs"])
def out_root(request, tmp_path):
    """A factory of fresh OUT_DIRs on local disk or on the GCS emulator."""
    if request.param == "gs":
        request.getfixturevalue("gcs_emulator")
        base = f"gs://{BUCKET}/{request.node.name.replace('[', '-').rstrip(']')}"
    else:
        base = str(tmp_path)
    counter = iter(range(10 ** 6))
    return lambda: f"{base}/out{next(counter)}"


def _commit_with(monkeypatch, job, faults):
    monkeypatch.setattr(commit, "FileSystems", faults)
    try:
        return job.commit()
    finally:
        monkeypatch.setattr(commit, "FileSystems", FileSystems)


def _fresh(out_root):
    root = out_root()
    old, previous = _commit_old_run(root)
    return root, old, Job(root, "new", 2, previous, overwrite=True)


@pytest.mark.parametrize("mode", ["before", "after", "partial"])
def test_a_retry_after_a_failure_at_any_file_operation_publishes_the_run(out_root, monkeypatch, mode):
    counting = FaultyFileSystems()
    root, _, job = _fresh(out_root)
    _commit_with(monkeypatch, job, counting)
    assert_published(root, job)
    total = counting.count
    assert total > 10, "the proxy saw the commit's file operations"
    points = range(total + 1)
    if out_root().startswith("gs://"):
        # Each emulator call costs ~10 ms: fail only at the operations that change OUT_DIR (a
        # failing read leaves the state a failure just before the next change leaves).
        points = [index for index, name in enumerate(counting.log) if name in FaultyFileSystems.CHANGES] + [total]
    for fail_at in points:
        root, old, job = _fresh(out_root)
        runs = {"old": old, job.nonce: job.files}
        # Checked before each change (reads change nothing a reader could see).
        faults = FaultyFileSystems(fail_at, mode, before_each=lambda _, name: name in FaultyFileSystems.CHANGES
                                   and assert_consistent(root, runs))
        try:
            _commit_with(monkeypatch, job, faults)
        except Injected:
            assert faults.failed
        assert (faults.failed is None) == (fail_at == total)
        assert_consistent(root, runs)  # what a reader sees while the job waits to retry
        assert [manifest["run_nonce"] for manifest in job.commit()] == [job.nonce]  # Beam's retry
        assert_published(root, job)
        assert job.commit()[0]["run_nonce"] == job.nonce, "a retry after success changes nothing"
        assert_published(root, job)


def test_two_failures_in_a_row_still_publish(tmp_path, monkeypatch):
    counting = FaultyFileSystems()
    root, _, job = _fresh(lambda: str(tmp_path / "count"))
    _commit_with(monkeypatch, job, counting)
    roots = iter(range(10 ** 6))
    for first in range(0, counting.count, 2):
        for second in range(counting.count):
            root, old, job = _fresh(lambda: str(tmp_path / f"out{next(roots)}"))
            runs = {"old": old, job.nonce: job.files}
            for fail_at, mode in ((first, "partial"), (second, "after")):
                try:
                    _commit_with(monkeypatch, job, FaultyFileSystems(fail_at, mode))
                except Injected:
                    pass
                assert_consistent(root, runs)
            job.commit()
            assert_published(root, job)


def test_jobs_with_identical_settings_get_their_own_staging(tiny_teacher, photo_folder, tmp_path, monkeypatch):
    import apache_beam as beam

    built, construct = [], commit.Commit.__init__

    def recorded(dofn, *args, **kwargs):
        construct(dofn, *args, **kwargs)
        built.append(dofn)

    monkeypatch.setattr(commit.Commit, "__init__", recorded)
    folder, _, _ = photo_folder
    argv = [f"--teacher={tiny_teacher}", f"--input={folder}/*", f"--output={tmp_path / 'out'}"]
    meta = label._teacher_metadata(tiny_teacher)
    for _ in range(2):  # select.build is where a job's Commit and staging directory are made
        settings = options.resolve(options.parse(argv)[0], meta.num_classes)
        document = label.index_base(settings, meta)
        select.build(beam.Pipeline(), settings, document)
    first, second = built
    assert first._staging != second._staging and first._run_nonce != second._run_nonce
    run_id = first._manifest_base["run_id"]
    assert run_id == second._manifest_base["run_id"] and run_id in first._staging and run_id in second._staging


@pytest.mark.parametrize("overwrite", [False, True])
def test_the_later_of_two_identical_jobs_fails_clearly(out_root, overwrite):
    root = out_root()
    first = Job(root, "first", 2, previous=None, overwrite=overwrite)  # both started on an empty OUT_DIR
    second = Job(root, "second", 2, previous=None, overwrite=overwrite)
    assert first.staging != second.staging
    first.commit()
    with pytest.raises(commit.CommitConflictError, match="committed by another job after this one started"):
        second.commit()
    assert_published(root, first, others=[second])
    with pytest.raises(commit.CommitConflictError):  # Beam's retry fails the same way
        second.commit()
    assert_published(root, first, others=[second])


def test_with_overwrite_a_job_started_after_a_commit_replaces_it_cleanly(out_root):
    root = out_root()
    first = Job(root, "first", 3, previous=None, overwrite=False)
    first.commit()
    second = Job(root, "second", 2, previous=commit.manifest_fingerprint(root), overwrite=True)
    second.commit()
    assert_published(root, second)  # first's third shard is gone too
    # A late Beam retry of the first job's commit (its staging is gone) must not touch it.
    with pytest.raises(commit.StagingError, match="already published them and another job has replaced them"):
        first.commit()
    assert_published(root, second)


def test_overwrite_is_rechecked_at_commit(out_root):
    root = out_root()
    _, at_start = _commit_old_run(root)
    late = Job(root, "late", 2, previous=at_start, overwrite=True)
    meanwhile = Job(root, "meanwhile", 2, previous=at_start, overwrite=True)
    meanwhile.commit()
    with pytest.raises(commit.CommitConflictError, match=f"holds run {RUN_ID} \\(nonce {meanwhile.nonce}\\), committed "
                       "by another job after this one started, replacing the run that --overwrite was asked to"):
        late.commit()
    assert_published(root, meanwhile, others=[late])

    root = out_root()
    late = Job(root, "late", 2, previous=None, overwrite=False)
    _commit_old_run(root)
    with pytest.raises(commit.CommitConflictError, match="and --overwrite was not given"):
        late.commit()
    assert assert_consistent(root, {"old": _run_files("old", 3)[0]}) == "old"


def test_an_interrupted_commit_blocks_other_jobs_with_a_clear_error(out_root, monkeypatch, tmp_path):
    counting = FaultyFileSystems()
    _commit_with(monkeypatch, _fresh(out_root)[2], counting)
    root, _, stuck = _fresh(out_root)
    # Fail after the old manifest is deleted and the first staged file is moved.
    faults = FaultyFileSystems(fail_at=counting.log.index("rename", counting.log.index("delete")), mode="partial")
    with pytest.raises(Injected):
        _commit_with(monkeypatch, stuck, faults)
    # A job started now is refused before any work, with the claim named and the way out.
    (tmp_path / "image.png").write_bytes(b"unused")
    settings = options.LabelSettings(teacher="unused", input=str(tmp_path / "*.png"), output=root, top_k=1,
                                     overwrite=True)
    with pytest.raises(options.UsageError, match=f"holds .*_committing-{stuck.nonce}.json: another labeling job is "
                       "committing there, or one was killed mid-commit"):
        options.validate(settings, num_classes=4)
    # One that started before the claim was written fails at its own commit.
    other = Job(root, "other", 2, previous=None, overwrite=True)
    with pytest.raises(commit.CommitConflictError, match=f"_committing-{stuck.nonce}.json is there"):
        other.commit()
    stuck.commit()  # its retry finishes the job
    assert_published(root, stuck, others=[other])

"""Commit: check the accounting, then publish a run's staged files into OUT_DIR.

The job writes its shards into `OUT_DIR/_staging-RUN_ID-NONCE/`. RUN_ID is a hash of the
settings; NONCE is a uuid drawn once when the pipeline is built (so every worker of one job
agrees on it, and two jobs with identical settings never share a staging directory). Once
every shard and every aggregate exists, this step (one element, at the end of the job on
every runner) checks that the counts close and only then publishes.

manifest.json is the commit marker: readers (student.train, pipeline.report) refuse a
directory without one, and it lists the files of the run relative to OUT_DIR, with the
record count of every train shard (files.train_counts, in files.train order; they add up
to counts.written), which the student takes its epoch sizes and resume positions from. Publishing
keeps one invariant at every instant, on local disk and on object stores alike: if
manifest.json exists, every file it lists exists and holds that run's bytes. Steps:

 1. Claim OUT_DIR: write `_committing-NONCE.json` (the staged files and their sizes), then
    list every `_committing-*`. Of two jobs that do this, the later lister sees the earlier
    claim (listings are strongly consistent on local disk and GCS), so at most one of them
    proceeds; the other fails with CommitConflictError. The claim is then marked as owned.
 2. Recheck --overwrite against OUT_DIR as it is now: a manifest committed by another job
    after this one started (or any manifest, without --overwrite) fails the commit.
 3. Delete the previous manifest.json: from here readers refuse OUT_DIR until step 6.
 4. Move the staged files to their final names (replacing a previous run's files of the same
    name), CHUNKS_IN_FLIGHT chunks of CHUNK_FILES at once, and check that each one is there with
    its staged size.
 5. Delete the previous run's files that the new manifest does not list (other shard counts),
    so that the manifest appears only once OUT_DIR holds exactly its files.
 6. Write stats.json, then manifest.json LAST (both via a temporary file and a rename, so a
    crash mid-write never leaves a torn file under the final name).
 7. Remove staging, the temporary files and, last, the claim.

Every step can be re-run from the start after a failure at any point (a Beam DoFn may run
twice): a file already moved is no longer in staging and the claim remembers its size; a
manifest carrying this job's nonce means steps 1-6 are done. If the accounting does not
close, or another job got in first, OUT_DIR is left untouched.
"""

import concurrent.futures
import hashlib
import json
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline import records, stats

MANIFEST_FILE = "manifest.json"
STATS_FILE = "stats.json"
STAGING_PREFIX = "_staging-"
CLAIM_PREFIX = "_committing-"
TEMP_PREFIX = "_tmp-"
# Step 4 moves, and steps 5 and 7 delete, in chunks of this many files: Beam's GCS filesystem
# sends at most 100 copies (or deletes) in one batch request, so a chunk of 100 renames is one
# copy batch and one delete batch; smaller chunks would only add requests.
CHUNK_FILES = 100
# Chunks in flight at once (threads that only wait on the network). Beam runs the batches of one
# rename one after another, and one delete lists, then deletes, each path in turn, so 53,000
# shards took minutes to tens of minutes from one thread. 32 chunks keep up to 3,200 copies in
# flight: enough to reach the ~1,000 object writes/s a GCS bucket starts out accepting, and more
# would mostly meet 429s (which Beam retries with backoff).
CHUNKS_IN_FLIGHT = 32
COUNT_NAMES = ("read", "rejected", "labeled", "below_threshold", "over_cap", "kept", "duplicates", "unavailable",
               "unavailable_copies", "written")


class AccountingError(RuntimeError):
    """The job lost or invented images somewhere: its counts do not close."""


class CommitConflictError(RuntimeError):
    """Another job committed, or is committing, into the same OUT_DIR."""


class StagingError(RuntimeError):
    """A staged file this run needs to publish is missing or has the wrong size."""


def check_accounting(counts, rejected_written):
    problems = []
    if counts["read"] != counts["rejected"] + counts["labeled"]:
        problems.append(f"read {counts['read']} != rejected {counts['rejected']} + labeled {counts['labeled']}")
    if counts["labeled"] != counts["below_threshold"] + counts["over_cap"] + counts["kept"] + counts["unavailable"]:
        problems.append(f"labeled {counts['labeled']} != below_threshold {counts['below_threshold']} + over_cap "
                        f"{counts['over_cap']} + kept {counts['kept']} + unavailable {counts['unavailable']}")
    if counts["written"] != counts["kept"] + counts["duplicates"]:
        problems.append(f"records written {counts['written']} != kept {counts['kept']} + duplicates "
                        f"{counts['duplicates']}")
    # Selected inputs that could not be fetched again are listed with the rejections too.
    listed = counts["rejected"] + counts["unavailable"] + counts["unavailable_copies"]
    if rejected_written != listed:
        problems.append(f"rejection lines written {rejected_written} != rejected {counts['rejected']} + unavailable "
                        f"{counts['unavailable']} + unavailable copies {counts['unavailable_copies']}")
    if problems:
        raise AccountingError("The labeling job's accounting does not close: " + "; ".join(problems)
                              + ". Nothing was published.")


def new_run_nonce():
    """A fresh id for one job. Drawn once at pipeline construction and pickled into the DoFns,
    so all workers (and all retries) of a job share it, and no two jobs do."""
    return uuid.uuid4().hex


def staging_dir(output, run_id, run_nonce):
    return FileSystems.join(output, f"{STAGING_PREFIX}{run_id}-{run_nonce}")


def existing_outputs(output):
    """Paths in `output` that belong to a previous run (its manifest first)."""
    found = []
    for pattern in (MANIFEST_FILE, f"{records.TRAIN_PREFIX}-*", f"{records.REJECTED_PREFIX}-*", STATS_FILE):
        found += list(_paths(FileSystems.join(output, pattern)).values())
    return found


def pending_claims(output):
    """Paths of `_committing-*` claims in `output`: a job committing now, or one killed mid-commit."""
    return sorted(_paths(FileSystems.join(output, f"{CLAIM_PREFIX}*")).values())


def read_manifest(output):
    """The manifest of a committed run in `output`, or None."""
    data = _read_bytes(FileSystems.join(output, MANIFEST_FILE))
    return None if data is None else json.loads(data)


def manifest_fingerprint(output):
    """Identifies the committed run in `output` (None: none). Read when the job starts, so the
    commit can tell "the run --overwrite was asked to replace" from one committed meanwhile."""
    data = _read_bytes(FileSystems.join(output, MANIFEST_FILE))
    return None if data is None else hashlib.sha256(data).hexdigest()


# Thin helpers: every file operation publishing does goes through FileSystems here, on local
# paths and gs:// alike (and the tests inject failures at each of them).

def _name(path):
    return path.rstrip("/").rsplit("/", 1)[-1]


def _paths(pattern):
    """{file name: path} of the files matching `pattern`."""
    return {_name(m.path): m.path for m in FileSystems.match([pattern])[0].metadata_list}


def _listing(pattern):
    """{file name: size in bytes} of the files matching `pattern`."""
    return {_name(m.path): m.size_in_bytes for m in FileSystems.match([pattern])[0].metadata_list}


def _read_bytes(path):
    """The bytes at `path`, or None when there is no such file."""
    if not FileSystems.exists(path):
        return None
    try:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            return handle.read()
    except Exception:
        if not FileSystems.exists(path):  # deleted since (another job's commit): absent, not an error
            return None
        raise


def _read_json(path):
    """The JSON document at `path`, or None when it is absent or not valid JSON."""
    data = _read_bytes(path)
    try:
        return None if data is None else json.loads(data)
    except ValueError:
        return None


def _write_json(output, name, document, run_nonce):
    """Writes OUT_DIR/name whole or not at all: a temporary file, then a rename (atomic on
    local disk; on GCS a copy, which creates the object in one piece)."""
    temp = FileSystems.join(output, f"{TEMP_PREFIX}{run_nonce}-{name}")
    with FileSystems.create(temp, mime_type="application/json") as handle:
        handle.write((json.dumps(document, indent=2, sort_keys=False) + "\n").encode())
    FileSystems.rename([temp], [FileSystems.join(output, name)])


def _in_chunks(operation, *path_lists, concurrency=None):
    """Runs `operation` on chunks of CHUNK_FILES paths of each list (zipped), up to `concurrency`
    (default CHUNKS_IN_FLIGHT) at once; one chunk runs in the calling thread. Every path is
    handled once or the call raises: the first chunk's error, once the chunks running then have
    ended (the rest are not started: the retry lists again and redoes only what is left)."""
    chunks = [[paths[start:start + CHUNK_FILES] for paths in path_lists]
              for start in range(0, len(path_lists[0]), CHUNK_FILES)]
    workers = min(concurrency or CHUNKS_IN_FLIGHT, len(chunks))
    if workers <= 1:
        for chunk in chunks:
            operation(*chunk)
        return
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="commit") as pool:
        futures = [pool.submit(operation, *chunk) for chunk in chunks]
        concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
        for future in futures:
            future.cancel()  # not started yet: nothing of it happened
    skipped = sum(future.cancelled() for future in futures)
    errors = [error for error in (future.exception() for future in futures if not future.cancelled()) if error]
    if errors:
        errors[0].add_note(f"{len(errors)} of {len(chunks)} chunks of up to {CHUNK_FILES} files failed and "
                           f"{skipped} were not started; a retry redoes what is left")
        raise errors[0]


def move_files(sources, destinations, concurrency=None):
    """Renames each of `sources` to the destination at its index (replacing what is there), in
    chunks of CHUNK_FILES, `concurrency` chunks (default CHUNKS_IN_FLIGHT) at once."""
    _in_chunks(FileSystems.rename, sources, destinations, concurrency=concurrency)


def _delete(paths, concurrency=None):
    """Deletes `paths`, just listed (so they exist: a retry lists again). In chunks like
    move_files: Beam's GCS delete lists, then deletes, one path after another, and step 5 may
    delete a whole previous run (other shard counts give every shard another name)."""
    _in_chunks(FileSystems.delete, paths, concurrency=concurrency)


def _delete_if_exists(path):
    if FileSystems.exists(path):  # an earlier attempt may have deleted it already
        FileSystems.delete([path])


class _Publisher:
    def __init__(self, output, staging, manifest, previous, overwrite):
        self.output, self.staging, self.manifest = output, staging, manifest
        self.previous, self.overwrite = previous, overwrite
        self.nonce = manifest["run_nonce"]
        self.names = manifest["files"]["train"] + manifest["files"]["rejected"]
        self.claim_name = f"{CLAIM_PREFIX}{self.nonce}.json"

    def path(self, name):
        return FileSystems.join(self.output, name)

    def publish(self, stats_document):
        if self._ours(_read_bytes(self.path(MANIFEST_FILE))):
            self._clean_up()  # an earlier attempt of this job got as far as step 6
            return
        claim = self._claim()
        _delete_if_exists(self.path(MANIFEST_FILE))
        self._move(claim["sizes"])
        published = set(self.names)
        _delete([path for prefix in (records.TRAIN_PREFIX, records.REJECTED_PREFIX)
                 for name, path in _paths(self.path(f"{prefix}-*")).items() if name not in published])
        _write_json(self.output, STATS_FILE, stats_document, self.nonce)
        _write_json(self.output, MANIFEST_FILE, self.manifest, self.nonce)
        self._clean_up()

    def _ours(self, manifest_bytes):
        try:
            return manifest_bytes is not None and json.loads(manifest_bytes).get("run_nonce") == self.nonce
        except (ValueError, AttributeError):
            return False

    def _claim(self):
        """Steps 1 and 2: returns this job's claim, which holds the staged sizes; raises
        CommitConflictError when another job's claim is there or --overwrite does not hold."""
        claim = _read_json(self.path(self.claim_name))
        if claim is None:
            staged = _listing(FileSystems.join(self.staging, "*"))
            missing = [name for name in self.names if name not in staged]
            if missing:
                raise StagingError(
                    f"{len(missing)} of the {len(self.names)} staged files (e.g. {missing[0]}) are missing from "
                    f"{self.staging}: either they were deleted, or this job already published them and another job "
                    "has replaced them since. Nothing was published.")
            claim = {"run_id": self.manifest.get("run_id"), "run_nonce": self.nonce, "owner": False,
                     "sizes": {name: staged[name] for name in self.names}}
            _write_json(self.output, self.claim_name, claim, self.nonce)
        if claim["owner"]:  # an earlier attempt won the claim: other jobs have failed theirs since
            self._check_overwrite()
            return claim
        others = sorted(name for name in _listing(self.path(f"{CLAIM_PREFIX}*")) if name != self.claim_name)
        try:
            if others:
                raise CommitConflictError(
                    f"Another labeling job is committing into {self.output} ({', '.join(others)} is there), so this "
                    f"run was not published. Two jobs must not write one OUT_DIR at the same time. If no other job "
                    f"is running, one was interrupted mid-commit: delete {self.path(others[0])} and rerun with "
                    "--overwrite.")
            self._check_overwrite()
        except CommitConflictError:
            _delete_if_exists(self.path(self.claim_name))  # nothing moved yet: leave no trace
            raise
        claim["owner"] = True
        _write_json(self.output, self.claim_name, claim, self.nonce)
        return claim

    def _check_overwrite(self):
        """Step 2: OUT_DIR may only hold the run this job saw when it started (with
        --overwrite), nothing (a previous attempt of this job may have deleted it), or this
        job's own manifest."""
        data = _read_bytes(self.path(MANIFEST_FILE))
        if data is None or self._ours(data):
            return
        if self.overwrite and hashlib.sha256(data).hexdigest() == self.previous:
            return
        try:
            found = json.loads(data)
            described = f"run {found.get('run_id')} (nonce {found.get('run_nonce')})"
        except ValueError:
            described = "an unreadable manifest"
        if not self.overwrite:
            reason = "and --overwrite was not given"
        elif self.previous is None:
            reason = "although it held no run when this job started"
        else:
            reason = "replacing the run that --overwrite was asked to replace"
        raise CommitConflictError(
            f"{self.path(MANIFEST_FILE)} now holds {described}, committed by another job after this one started, "
            f"{reason}; this run was not published rather than clobber it. Rerun with --overwrite to replace it.")

    def _move(self, sizes):
        """Step 4: moves what is still staged, then checks every file is in place (order does not
        matter: the old manifest is gone, and a retry moves whatever is still staged)."""
        staged = _listing(FileSystems.join(self.staging, "*"))
        pending = [name for name in self.names if name in staged]
        move_files([FileSystems.join(self.staging, name) for name in pending], [self.path(name) for name in pending])
        published = {}
        for prefix in (records.TRAIN_PREFIX, records.REJECTED_PREFIX):
            published.update(_listing(self.path(f"{prefix}-*")))
        wrong = [name for name in self.names if published.get(name) != sizes[name]]
        if wrong:
            raise StagingError(f"{self.path(wrong[0])} is missing or not the size it was staged with "
                               f"({sizes[wrong[0]]} bytes) after the move; manifest.json was not written.")

    def _clean_up(self):
        """Step 7 (idempotent): staging, temporary files, then the claim."""
        _delete(list(_paths(FileSystems.join(self.staging, "*")).values()))
        _delete_if_exists(self.staging)  # the local directory (on GCS a prefix, not an object)
        _delete(list(_paths(self.path(f"{TEMP_PREFIX}{self.nonce}-*")).values()))
        _delete_if_exists(self.path(self.claim_name))


class Commit(beam.DoFn):
    """facts dict -> publishes OUT_DIR; yields the manifest.

    `run_nonce` names this job (see new_run_nonce); `previous` is manifest_fingerprint(OUT_DIR)
    when the job started; `overwrite` is --overwrite, rechecked against OUT_DIR at commit.
    """

    def __init__(self, output, staging, manifest_base, class_names, run_nonce, previous=None, overwrite=False):
        self._output, self._staging = output, staging
        self._manifest_base = manifest_base
        self._class_names = class_names
        self._run_nonce, self._previous, self._overwrite = run_nonce, previous, overwrite

    def process(self, facts):
        train_files = sorted(facts["train_files"])
        rejected_files = sorted(facts["rejected_files"])
        counts = {name: int(facts[name]) for name in COUNT_NAMES if name != "written"}
        # Facts count what selection chose; the shard writers could not fetch the unavailable ones.
        counts["kept"] -= counts["unavailable"]
        counts["duplicates"] -= counts["unavailable_copies"]
        counts["written"] = sum(count for _, count in train_files)
        check_accounting(counts, sum(count for _, count in rejected_files))
        document = stats.stats_document(facts, self._class_names)
        manifest = dict(self._manifest_base)
        manifest.update({
            "run_nonce": self._run_nonce,
            "counts": counts,
            "rejected_by_reason": document["rejected_by_reason"],
            # train_counts: records per train shard, in files.train order (what the shard writers
            # wrote), so the student sizes shares and resumes without reading the shards.
            "files": {"train": [name for name, _ in train_files],
                      "train_counts": [int(count) for _, count in train_files],
                      "rejected": [name for name, _ in rejected_files]},
        })
        _Publisher(self._output, self._staging, manifest, self._previous, self._overwrite).publish(document)
        beam.metrics.Metrics.counter("Commit", "runs_committed").inc()
        yield manifest

"""Progress of a labeling run: Beam counters everywhere, and a line every few seconds locally.

Every input the job finds ends as exactly one labeled image or one rejection (the manifest's
accounting checks it), so progress is `done = labeled + rejected` out of `total = found`, where
found counts what the match/list step yields before any file is read (ReadImages.found; "?" for
TFRecord and TFDS input, whose image count is only known once read).

The counts are Beam counters, Progress/found and Progress/processed: on Dataflow (or any remote
runner) they are the source of truth, shown live in the job's UI next to the stages' own
counters, and the job only prints where to find them. The local runner shows nothing until it
ends, hence the lines printed here, from inside the pipeline, because:
  - the main thread cannot poll `result.metrics()`: FnApiRunner runs the whole pipeline inside
    `pipeline.run()` and builds its result, metrics included, only at the end (checked by
    tests/test_progress.py);
  - a DoFn that counts in its own memory sees one process's share: with
    --direct_running_mode=multi_processing each worker process would print its own part;
  - a printing thread in the main process would need the same shared counts, plus a start and
    a stop around `pipeline.run()`, outside the graph that build() returns; printing from the
    tallies needs no thread, and prints nothing new while no image moves anyway.
So tallies (DoFns fused into the stages that label or reject images, counting as images flow)
publish their own counts to a small local folder, the board, that every worker process of the
run shares (local runners run them all on this machine); whichever tally finds the last line
older than --progress_every_s prints the sum, under a file lock: one line per interval whatever
the number of workers, while images flow (none while the teacher loads or compiles). A last
DoFn, after the commit, prints the final counts and removes the board. Lines go to stderr;
nothing here changes the job's outputs.
"""

import fcntl
import glob
import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
import weakref

import apache_beam as beam
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner, SwitchingDirectRunner
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

NAMESPACE = "Progress"
_LOCAL_RUNNERS = (FnApiRunner, SwitchingDirectRunner, BundleBasedDirectRunner)
_LAST_LINE = "last_line"  # the lock file, holding the time of the last line printed


def format_duration(seconds):
    """42s, 11m48s, 2h05m; "?" when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def format_rate(per_second):
    """124 img/s; 3.5 img/s below ten, where a rounded whole number would hide most of it."""
    if per_second is None or not math.isfinite(per_second):
        return "? img/s"
    return f"{per_second:,.1f} img/s" if per_second < 10 else f"{per_second:,.0f} img/s"


def progress_line(done, total, rejected, elapsed_s, finished=False):
    """One progress line. `done` counts labeled and rejected images; `total` is None when unknown.

    The rate is `done` over `elapsed_s` (None or under a second: unknown, as is the ETA then).
    """
    rate = done / elapsed_s if elapsed_s and elapsed_s >= 1 else None
    share = f"{int(100 * done / total)}%; " if total else ""  # floored: 100% only once all are done
    counted = f"{done:,} / {'?' if total is None else f'{total:,}'} images done ({share}{rejected:,} rejected)"
    if finished:
        return f"labeling: {counted}, {format_rate(rate)}, took {format_duration(elapsed_s)}"
    eta = (total - done) / rate if total is not None and rate else None
    return f"labeling: {counted}, {format_rate(rate)}, ETA {format_duration(eta)}"


def _say(line):
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class Board:
    """A local folder where each tally of one run publishes its counts, as `<tally id>.json`."""

    def __init__(self, path):
        self.path = path

    @classmethod
    def create(cls):
        board = cls(tempfile.mkdtemp(prefix="label-progress-"))
        with open(os.path.join(board.path, _LAST_LINE), "w") as file:  # the first line one interval in
            file.write(repr(time.time()))
        return board

    def publish(self, tally_id, counts):
        final = os.path.join(self.path, f"{tally_id}.json")
        with open(final + ".tmp", "w") as file:
            json.dump(counts, file)
        os.replace(final + ".tmp", final)  # readers never see a half-written file

    def read(self):
        """The sums over every tally: {"labeled", "rejected", "first", "last"} (times may be None)."""
        tallies = []
        for path in glob.glob(os.path.join(self.path, "*.json")):
            with open(path) as file:
                tallies.append(json.load(file))
        times = lambda key: [tally[key] for tally in tallies if tally[key] is not None]  # noqa: E731
        return {"labeled": sum(t["labeled"] for t in tallies), "rejected": sum(t["rejected"] for t in tallies),
                "first": min(times("first"), default=None), "last": max(times("last"), default=None)}

    def line(self, total, now, finished=False):
        counts = self.read()
        elapsed = ((counts["last"] if finished else now) - counts["first"]) if counts["first"] else None
        return progress_line(counts["labeled"] + counts["rejected"], total, counts["rejected"], elapsed, finished)

    def report_if_due(self, every_s, total):
        """Prints the line when the last one (by any process of the run) is `every_s` old."""
        with open(os.path.join(self.path, _LAST_LINE), "r+") as file:
            try:  # another tally holding the lock is printing this very interval's line
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            now = time.time()
            if now - float(file.read() or 0) < every_s:
                return
            _say(self.line(total, now))
            file.seek(0)
            file.truncate()
            file.write(repr(now))

    def remove(self):
        shutil.rmtree(self.path, ignore_errors=True)


class _Tally(beam.DoFn):
    """Counts ("labeled" | "rejected", count) elements; yields nothing.

    Locally it also publishes its counts to the board: every `every_s / 2` (at most once a
    second) and at the end of each bundle, so the last line of the run misses none.
    """

    def __init__(self, board_path=None, every_s=0):
        self._board_path, self._every_s = board_path, every_s
        self._processed = beam.metrics.Metrics.counter(NAMESPACE, "processed")

    def setup(self):
        self._id = uuid.uuid4().hex  # one file per DoFn instance: no two writers share a file
        self._counts = {"labeled": 0, "rejected": 0, "first": None, "last": None}
        self._board = Board(self._board_path) if self._board_path else None
        self._publish_every_s = min(1.0, self._every_s / 2)
        self._next_publish, self._total = 0.0, None

    def process(self, element, total=None):
        kind, count = element
        self._processed.inc(count)
        if self._board is None:
            return
        now = time.time()
        self._counts[kind] += count
        self._counts["first"] = self._counts["first"] or now
        self._counts["last"] = now
        self._total = total
        if now >= self._next_publish:
            self._publish(now)

    def finish_bundle(self):
        if self._board is not None and self._counts["last"] is not None:
            self._publish(time.time())

    def _publish(self, now):
        try:
            self._board.publish(self._id, self._counts)
            self._next_publish = now + self._publish_every_s
            self._board.report_if_due(self._every_s, self._total)
        except OSError as error:  # best effort: a lost board (a /tmp cleaner, a full disk) must not fail the job
            _say(f"labeling: no more progress lines from this worker ({type(error).__name__}: {error})")
            self._board = None


class _CountFound(beam.DoFn):
    def __init__(self):
        self._found = beam.metrics.Metrics.counter(NAMESPACE, "found")

    def process(self, element):
        self._found.inc()


class _Finish(beam.DoFn):
    """After the commit, and after every tally (their outputs are side inputs): the last line."""

    def __init__(self, board_path):
        self._board_path = board_path

    def process(self, committed, *tallies, total=None):
        board = Board(self._board_path)
        try:
            _say(board.line(total, time.time(), finished=True))
        except OSError as error:  # as in _Tally: progress never fails the job
            _say(f"labeling: no final progress line ({type(error).__name__}: {error})")
        board.remove()


def track(every_s, runner, found, done, committed):
    """Adds the stage "Progress" to the pipeline of these PCollections.

    `found`: ListUnits.found (empty: total unknown); `done`: ("labeled" | "rejected", count)
    as images finish; `committed`: the stage's output, after which the final line is printed.
    """
    local = isinstance(runner, _LOCAL_RUNNERS)
    if not local:
        _say(f"pipeline.label: progress on {type(runner).__name__} is in the job's Beam counters "
             f"{NAMESPACE}/processed (labeled or rejected) of {NAMESPACE}/found (the total), next to ReadImages/*, "
             "Decode/*, Label/*: on Dataflow the job page (Job metrics, Custom counters) or "
             "`gcloud dataflow metrics list JOB_ID --region=REGION --source=user`.")
    inputs = {"done": done, "committed": committed,
              **{f"found{index}": part for index, part in enumerate(found)}}
    return inputs | "Progress" >> Progress(every_s, local)


class Progress(beam.PTransform):
    """{"done", "committed", "found0".. (may be none)} -> Beam counters, and the lines printed
    on a local runner (`local`)."""

    def __init__(self, every_s, local):
        super().__init__()
        self._every_s, self._local = every_s, local

    def expand(self, inputs):
        board = Board.create() if self._local else None
        if board:  # _Finish removes it after a run that succeeds; else the pipeline's end or the process's
            weakref.finalize(inputs["done"].pipeline, board.remove)
        found = tuple(pcoll for name, pcoll in sorted(inputs.items()) if name.startswith("found"))
        total = None
        if found:
            everything = found | "Found" >> beam.Flatten()
            everything | "CountFound" >> beam.ParDo(_CountFound())
            if board:
                total = beam.pvalue.AsSingleton(everything | "Total" >> beam.combiners.Count.Globally())
        side = {"total": total} if total is not None else {}
        tallies = [inputs["done"] | "Tally" >> beam.ParDo(_Tally(board and board.path, self._every_s), **side)]
        if board:
            return inputs["committed"] | "Finish" >> beam.ParDo(
                _Finish(board.path), *map(beam.pvalue.AsList, tallies), **side)
        return tallies[0]

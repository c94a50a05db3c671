"""pipeline.commit under concurrency: two jobs' commits interleaved one file operation at a
time, in every order, never mix OUT_DIR (helpers from test_commit)."""

import threading

from apache_beam.io.filesystems import FileSystems

from pipeline import commit
from test_commit import FaultyFileSystems, Job, _commit_old_run, _commit_with, _fresh, assert_consistent, \
    assert_published


class Lockstep:
    """Two jobs' commits in threads, one file operation at a time, in the order `schedule`
    gives (then whoever is left runs to its end). A job holds the turn from one operation's
    start until its next operation (or its end)."""

    def __init__(self, schedule):
        self.schedule, self.position = list(schedule), 0
        self.done, self.holder, self.condition = set(), None, threading.Condition()

    def acquire(self, job):
        with self.condition:
            if self.holder == job:  # its previous operation is over
                self.holder = None
                self.condition.notify_all()
            while True:
                while self.position < len(self.schedule) and self.schedule[self.position] in self.done:
                    self.position += 1
                mine = self.position >= len(self.schedule) or self.schedule[self.position] == job
                if mine and self.holder is None:
                    self.position, self.holder = self.position + 1, job
                    return
                self.condition.wait()

    def finish(self, job):
        with self.condition:
            self.done.add(job)
            self.holder = None if self.holder == job else self.holder
            self.condition.notify_all()


def test_two_jobs_committing_at_once_never_mix(tmp_path, monkeypatch):
    """Both jobs saw the same run at start and may --overwrite it. Whatever the
    interleaving of their file operations, at most one publishes and OUT_DIR never mixes."""
    lengths = {}
    for tag in ("a", "b"):
        counting = FaultyFileSystems()
        _commit_with(monkeypatch, _fresh(lambda: str(tmp_path / f"count-{tag}"))[2], counting)
        lengths[tag] = counting.count
    roots = iter(range(10 ** 6))
    for a_first in range(lengths["a"] + 1):
        for b_next in range(0, lengths["b"] + 1, 2):
            root = str(tmp_path / f"out{next(roots)}")
            old, previous = _commit_old_run(root)
            jobs = {"a": Job(root, "a", 2, previous, True), "b": Job(root, "b", 2, previous, True)}
            runs = {"old": old, **{job.nonce: job.files for job in jobs.values()}}
            steps = Lockstep("a" * a_first + "b" * b_next + "a" * 1000 + "b" * 1000)
            outcome, tags = {}, {}

            def before_each(index, name):
                steps.acquire(tags[threading.get_ident()])
                assert_consistent(root, runs)

            def run(tag):
                tags[threading.get_ident()] = tag
                try:
                    jobs[tag].commit()
                    outcome[tag] = "published"
                except commit.CommitConflictError:
                    outcome[tag] = "conflict"
                except Exception as error:  # noqa: BLE001 - reported below
                    outcome[tag] = repr(error)
                finally:
                    steps.finish(tag)

            monkeypatch.setattr(commit, "FileSystems", FaultyFileSystems(before_each=before_each))
            threads = [threading.Thread(target=run, args=(tag,)) for tag in "ab"]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            monkeypatch.setattr(commit, "FileSystems", FileSystems)
            assert sorted(outcome.values()) in (["conflict", "published"], ["conflict", "conflict"]), \
                (a_first, b_next, outcome)
            winner = assert_consistent(root, runs)
            if "published" in outcome.values():
                (tag,) = [tag for tag, result in outcome.items() if result == "published"]
                assert winner == jobs[tag].nonce
                assert_published(root, jobs[tag], others=[job for job in jobs.values() if job is not jobs[tag]])
            else:
                assert winner in ("old", None)

"""How the prediction index grows: buckets of units, shards per run, what a rerun predicts.

Every unit of work (an image file, a TFRecord file, a TFDS range, a listing rejection; see
pipeline/sources.py) belongs to one bucket, `records.shard_of(unit id, B)`. B is fixed when
the index is created (a power of two, --images_per_prediction_shard units per bucket) and
only ever doubles, when the list has outgrown it; a bucket of B is then the union of two
buckets of 2B, so a shard written under B still belongs to exactly the buckets that hash to it.

A bucket's entries live in one or more shards, one per run that found new units there:
  predictions-BBBBB-of-NNNNN-DIGEST.tfrecord    the entries of the run's new units
  predictions-BBBBB-of-NNNNN-DIGEST.units.json  those units, with their labeled/rejected counts
  dropped-BBBBB-of-NNNNN-DIGEST.json            units of older shards no longer listed
DIGEST hashes the index id and the shard's units, so a killed run, rerun with the same list,
finds its finished shards under the same names and keeps them.

A rerun lists the inputs and groups them by bucket. A bucket whose units are the ones the
index recorded (their digest) is kept as it is: nothing is read. Otherwise the unit lists of
the bucket's shards are read (units and counts, not the entries), and only the units not in
them are predicted; units that vanished from the list are written to a dropped file, which
the selection honours (`live_entries`). index.json says per bucket which shards hold its
live units and per shard which run wrote it, with the counts of live entries, so a complete
index is counted without reading a shard.
"""

import collections
import hashlib
import json

from apache_beam.io.filesystems import FileSystems

from pipeline import index, records, sources

UNITS_SUFFIX = ".units.json"
DROPPED_PREFIX = "dropped"


def unit_key(unit):
    """A unit as one canonical string (units are tuples of str, int and None)."""
    return json.dumps(list(unit))


def bucket_of(unit, num_buckets):
    return records.shard_of(sources.unit_id(unit), num_buckets)


def bucket_count(units, per_bucket, previous_count=None):
    """The bucket count of a run over `units`: the index's own, doubled only when outgrown."""
    wanted = 1
    while wanted * per_bucket < units:
        wanted *= 2
    return max(wanted, previous_count or 1)


def units_digest(keys):
    """Identifies a bucket's sorted unit keys (a Counter's elements: a unit may repeat)."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]


def units_name(shard_name):
    return shard_name[:-len(index.SHARD_SUFFIX)] + UNITS_SUFFIX


def _json(path):
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return json.loads(handle.read())


def write_json(path, document):
    """Writes `path` whole or not at all (a temporary name, then a rename)."""
    directory, name = path.rsplit("/", 1)
    temp = FileSystems.join(directory, f"_tmp-{hashlib.sha256(path.encode()).hexdigest()[:8]}-{name}")
    with FileSystems.create(temp, mime_type="application/json") as handle:
        handle.write(json.dumps(document, sort_keys=True).encode())
    FileSystems.rename([temp], [path])


def read_units(directory, shard_name):
    """[(unit key, labeled, rejected)] of a shard, in the shard's order."""
    return [tuple(row) for row in _json(FileSystems.join(directory, units_name(shard_name)))["units"]]


class Plan(collections.namedtuple("Plan", "digest unchanged parts new_units lists_read")):
    """What a run does with one bucket: `parts` [shard name, live units, labeled, rejected,
    dropped file or None] of the shards it keeps; `new_units` the units to predict;
    `lists_read` how many shards' unit lists it read to know."""


def plan_bucket(directory, previous, bucket, num_buckets, units):
    """The Plan of `bucket` for the run's sorted `units`, given the previous index (or None).

    Reads nothing when the bucket's units are those the index recorded; otherwise reads the
    unit lists of the shards the bucket's units may be in, and writes a dropped file for
    each shard some of whose units in this bucket are no longer listed."""
    keys = [unit_key(unit) for unit in units]
    digest = units_digest(keys)
    if previous and previous["num_buckets"] == num_buckets:
        recorded = previous["buckets"][bucket]
        if recorded["digest"] == digest:
            return Plan(digest, True, recorded["parts"], [], 0)
    wanted = collections.Counter(keys)
    parts, lists_read = [], 0
    for shard in (previous or {}).get("shards", []):
        if bucket % shard["of"] != shard["bucket"]:
            continue
        lists_read += 1
        live, dropped, labeled, rejected = 0, [], 0, 0
        for key, shard_labeled, shard_rejected in read_units(directory, shard["name"]):
            if bucket_of(json.loads(key), num_buckets) != bucket:
                continue  # a unit of the other half of a bucket split since
            if wanted[key]:
                wanted[key] -= 1
                live, labeled, rejected = live + 1, labeled + shard_labeled, rejected + shard_rejected
            else:
                dropped.append(key)
        if live or dropped:
            parts.append([shard["name"], live, labeled, rejected, _write_dropped(directory, shard["name"], bucket,
                                                                                 num_buckets, dropped)])
    new_units = [unit for unit, key in zip(units, keys) if _take(wanted, key)]
    return Plan(digest, False, parts, new_units, lists_read)


def _take(counter, key):
    if counter[key]:
        counter[key] -= 1
        return True
    return False


def _write_dropped(directory, shard_name, bucket, num_buckets, dropped):
    if not dropped:
        return None
    digest = hashlib.sha256(json.dumps([shard_name, sorted(dropped)]).encode()).hexdigest()[:12]
    name = f"{DROPPED_PREFIX}-{bucket:05d}-of-{num_buckets:05d}-{digest}.json"
    path = FileSystems.join(directory, name)
    if not FileSystems.exists(path):
        write_json(path, {"shard": shard_name, "units": sorted(dropped)})
    return name


def fingerprint(document):
    """Identifies an index.json document (None: no index). The DoFns carry this, not the
    document: at 130M images index.json is megabytes, and a Dataflow job's graph, which holds
    the pickled DoFns, is limited to 10 MB."""
    return None if document is None else hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def previous_index(directory, expected):
    """The index.json a run grows, read where it runs: None for a new index; raises when the
    directory holds another document than the one the run was built for (the claim keeps
    other stage-1 jobs out, so only a person can have changed it)."""
    if expected is None:
        return None
    document = index.read_index(directory)
    if fingerprint(document) != expected:
        raise RuntimeError(f"{directory}/{index.INDEX_FILE} changed after this stage-1 job started; it stopped "
                           "without writing anything. Rerun it.")
    return document


def index_document(base, previous, bucket_records, num_buckets, run):
    """index.json for a run: `base` (identity and teacher), `bucket_records` {bucket: {digest,
    parts}} from every bucket, `run` {input, settings} of this run."""
    buckets = [bucket_records[b] for b in range(num_buckets)]
    earlier = {shard["name"]: shard for shard in (previous or {}).get("shards", [])}
    number = len((previous or {}).get("runs", [])) + 1
    shards = {}
    for b, record in enumerate(buckets):
        for name, live, labeled, rejected, dropped in record["parts"]:
            bucket, of = _bucket_in_name(name)
            shard = shards.setdefault(name, {"name": name, "bucket": bucket, "of": of,
                                             "run": earlier.get(name, {}).get("run", number),
                                             "units": 0, "labeled": 0, "rejected": 0, "dropped": []})
            shard["units"] += live
            shard["labeled"] += labeled
            shard["rejected"] += rejected
            if dropped:
                shard["dropped"].append(dropped)
    kept = [shard for _, shard in sorted(shards.items()) if shard["units"]]
    labeled = sum(shard["labeled"] for shard in kept)
    rejected = sum(shard["rejected"] for shard in kept)
    new = [shard for shard in kept if shard["name"] not in earlier]
    run = dict(run, run=number, new_shards=len(new), new_units=sum(shard["units"] for shard in new),
               predicted={"labeled": sum(s["labeled"] for s in new), "rejected": sum(s["rejected"] for s in new)})
    return dict(base, num_buckets=num_buckets, shards=kept, buckets=buckets,
                runs=[*(previous or {}).get("runs", []), run],
                counts={"read": labeled + rejected, "labeled": labeled, "rejected": rejected})


def _bucket_in_name(name):
    _, bucket, _, of = name.split("-")[:4]
    return int(bucket), int(of)


def referenced_files(document):
    """Every file of PRED_DIR that `document` (index.json) needs."""
    names = {index.INDEX_FILE}
    for shard in document["shards"]:
        names.update([shard["name"], units_name(shard["name"]), *shard["dropped"]])
    return names


def live_entries(shard, directory):
    """The entries (Prediction or Rejection) of one shard record of index.json whose units are
    still listed: a dropped file names units whose entries are skipped."""
    dropped = [json.loads(key) for name in shard["dropped"]
               for key in _json(FileSystems.join(directory, name))["units"]]
    skip = _Skip(dropped)
    for entry in index.read_shard(FileSystems.join(directory, shard["name"])):
        if not skip(entry.uri):
            yield entry


class _Skip:
    """Whether an entry belongs to a dropped unit. A file or listing-rejection unit holds one
    entry (with the unit's URI; a URI may be dropped n times, so n entries are skipped); a
    TFRecord file holds `PATH#i` entries, or one rejection naming PATH; a TFDS range holds
    `tfds:NAME/SPLIT/i` for i in [start, end)."""

    def __init__(self, units):
        self._single = collections.Counter(unit[1] for unit in units if unit[0] in ("file", "rejected"))
        self._files = {unit[1] for unit in units if unit[0] == "tfrecord"}
        self._ranges = [(unit[1], unit[2]) for unit in units if unit[0] == "tfds"]

    def __call__(self, uri):
        if self._single[uri]:
            self._single[uri] -= 1
            return True
        if self._files and (uri in self._files or uri.rsplit("#", 1)[0] in self._files):
            return True
        if self._ranges and uri.startswith("tfds:"):
            position = int(uri.rsplit("/", 1)[1])
            return any(start <= position and (end is None or position < end) for start, end in self._ranges)
        return False

"""Guarded reads of single input files: refuse, before reading, what must not be read.

Used by pipeline.sources (ReadImages) for image files, listed URIs and TFRecord files, and
by pipeline.fetch (stage 2) for image files:
  - an image file over --max_bytes is refused from the size the listing already has
    (`too_large`), and every read is bounded (at most --max_bytes + 1 bytes), since a size
    can lie (/proc files, a file growing while it is read);
  - local paths that are not regular files (a FIFO would block the read forever, a symlink
    to /dev/zero never ends) are refused from their stat before any read, and checked again
    on the opened descriptor (`not_a_regular_file`);
  - entries a local listing cannot stat (dangling or looping symlinks, which Beam's listing
    drops silently) and matches that fail become reasons (`unreadable`, `match_failed`).
gs:// image files are read through pipeline.storage (one client per process, one ranged GET
per object); other schemes through Beam's FileSystems.
"""

import os
import re
import stat

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline import storage

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
GLOB_CHARACTERS = "*?["
_READ_CHUNK = 8 << 20
_FIRST_CHUNK = 64 << 10  # under glibc's mmap threshold (128 KB)
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def open_uri(uri):
    return FileSystems.open(uri, mime_type="application/octet-stream",
                            compression_type=CompressionTypes.UNCOMPRESSED)


def has_image_extension(uri):
    return os.path.splitext(uri)[1].lower() in IMAGE_EXTENSIONS


def is_local(uri):
    return FileSystems.get_scheme(uri) is None


def _too_large(size, max_bytes):
    return f"too_large: {size} bytes > --max_bytes={max_bytes} (refused before reading)"


def _not_regular(path, mode):
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    target = f", through a symlink to {os.path.realpath(path)}" if os.path.islink(path) else ""
    return f"not_a_regular_file: {kind}{target}"


def _missing(path, error):
    if os.path.islink(path):
        return f"unreadable: a dangling symlink (its target {os.readlink(path)!r} does not exist)"
    return f"unreadable: {type(error).__name__}: {error}"


class InputRejected(Exception):
    """Raised while opening or reading an input, with a "category: detail" reason."""


def open_local(path):
    """A local path -> an open binary file of a regular file, checked without reading it.

    The path's stat names what it is before anything is opened (opening a FIFO for
    reading blocks until a writer comes); O_NONBLOCK keeps the open itself from blocking if
    the path is swapped for a FIFO meanwhile, and the opened descriptor is checked again.
    """
    try:
        mode = os.stat(path).st_mode  # follows symlinks: a link to /dev/zero is a character device
    except FileNotFoundError as error:
        raise InputRejected(_missing(path, error)) from error
    except OSError as error:  # a symlink loop, a name too long, permission on a parent folder
        raise InputRejected(f"unreadable: {type(error).__name__}: {error}") from error
    if not stat.S_ISREG(mode):
        raise InputRejected(_not_regular(path, mode))
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise InputRejected(f"unreadable: {type(error).__name__}: {error}") from error
    handle = os.fdopen(descriptor, "rb")
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        handle.close()
        raise InputRejected(_not_regular(path, mode))
    return handle


def _read_bounded(handle, max_bytes, size_hint=None):
    """At most max_bytes + 1 bytes of `handle` (one more than allowed says it is too long).

    A read of n bytes allocates n bytes first, so reads start small and grow: `size_hint` (the
    file's size, when known) sizes the first, and the read that finds the end asks for
    _FIRST_CHUNK, not _READ_CHUNK. Asking 8 MB for it cost an 8 MB allocation per image, in every
    read thread (measured with memray, both stages over 100k tiny images on a 2-core AMD EPYC:
    50 MB of them live at the peak, in per-thread malloc arenas that keep it)."""
    chunks, total = [], 0
    step = _FIRST_CHUNK if size_hint is None else min(_READ_CHUNK, size_hint + 1)
    while total <= max_bytes:
        asked = min(step, max_bytes + 1 - total)
        chunk = handle.read(asked)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        # A short read is most likely the end: a small read confirms it.
        step = _FIRST_CHUNK if len(chunk) < asked else min(_READ_CHUNK, 2 * asked)
    return b"".join(chunks)


def read_file(uri, max_bytes, size=None):
    """The bytes of one file, at most `max_bytes` of them; raises InputRejected saying why not.

    `size` is what the listing said (None when unknown): a file it puts over `max_bytes` is
    refused without being opened. Local paths must be regular files (see `open_local`); a gs://
    object is one GET of at most max_bytes + 1 bytes (see pipeline.storage).
    """
    if size is not None and size > max_bytes:
        raise InputRejected(_too_large(size, max_bytes))
    if uri.startswith("gs://"):
        data = _read_object(uri, max_bytes)
    else:
        data, size = _read_opened(uri, max_bytes, size)
    if len(data) > max_bytes:
        said = f"; its size said {size} bytes" if size is not None else ""
        raise InputRejected(f"too_large: more than --max_bytes={max_bytes} bytes read{said} (the read stopped there)")
    return data


def _read_object(uri, max_bytes):
    try:
        return storage.read_bounded(uri, max_bytes)
    except Exception as error:  # missing, permission, network (after the client's retries): say which
        raise InputRejected(f"unreadable: {type(error).__name__}: {error}") from error


def _read_opened(uri, max_bytes, size):
    """(at most max_bytes + 1 bytes, the size known) of a local file or a Beam FileSystems URI."""
    try:
        handle = open_local(uri) if is_local(uri) else open_uri(uri)
    except InputRejected:
        raise
    except Exception as error:  # missing, permission: the reason says which
        raise InputRejected(f"unreadable: {type(error).__name__}: {error}") from error
    with handle:
        if is_local(uri):
            size = os.fstat(handle.fileno()).st_size
            if size > max_bytes:
                raise InputRejected(_too_large(size, max_bytes))
        try:
            return _read_bounded(handle, max_bytes, size), size
        except Exception as error:
            raise InputRejected(f"unreadable: {type(error).__name__}: {error}") from error


def _unstattable_local_entries(pattern, listed):
    """Local paths that `pattern` matches but Beam's listing dropped, with why.

    Beam lists a local folder with os.walk and silently skips every entry it cannot stat
    (a dangling or looping symlink); this walks the same folder with the same pattern and
    returns those entries as (path, reason), so they are counted as rejections.
    """
    if not is_local(pattern):
        return []
    prefix = pattern[:min([pattern.index(c) for c in GLOB_CHARACTERS if c in pattern] or [len(pattern)])]
    if prefix == pattern:  # no glob: Beam matches the path itself when it exists (a dangling link does not)
        candidates = [pattern] if os.path.islink(pattern) and not os.path.exists(pattern) else []
    else:
        regex = re.compile(FileSystems.get_filesystem(pattern).translate_pattern(pattern))
        candidates = [os.path.join(folder, name) for folder, _, names in os.walk(os.path.dirname(prefix))
                      for name in names if regex.match(os.path.join(folder, name))]
    found = []
    for path in candidates:
        if path in listed:
            continue
        try:
            os.stat(path)
        except FileNotFoundError as error:
            found.append((path, _missing(path, error)))
        except OSError as error:
            found.append((path, f"unreadable: {type(error).__name__}: {error}"))
    return sorted(found)


def match_pattern(pattern):
    """A glob -> ([(path, size in bytes)], [(path or pattern, rejection reason)])."""
    try:
        metadata = FileSystems.match([pattern])[0].metadata_list
    except Exception as error:  # e.g. a pattern that is no valid glob, a bucket that cannot be listed
        return [], [(pattern, f"match_failed: {type(error).__name__}: {error}")]
    matched = [(item.path, item.size_in_bytes) for item in metadata]
    problems = _unstattable_local_entries(pattern, {path for path, _ in matched})
    if not matched and not problems:
        problems = [(pattern, "not_found: the glob matches no file")]
    return matched, problems

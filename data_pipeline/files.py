"""Atomic file writes (a reader sees the old file or the whole new one, never a part), and the
size and checksum of a file as written.

The one implementation for every file the project writes whole (tokenizers, manifests, configs,
labels, caches). Local paths write a temporary file in the same folder and `os.replace` it;
paths that only `etils.epath` reaches (gs://) are written whole by the object store, which is
already atomic per object.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

from etils import epath


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically (parent folders must exist)."""
    path_str = os.fspath(path)
    if "://" in path_str:
        epath.Path(path_str).write_bytes(data)
        return
    folder = os.path.dirname(os.path.abspath(path_str))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".tmp-{os.path.basename(path_str)}-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path_str)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """`write_bytes` of UTF-8 text."""
    write_bytes(path, text.encode("utf-8"))


def size_and_sha256(path: str | os.PathLike) -> tuple[int, str]:
    """(bytes, hex sha256) of the file, read in 1 MiB blocks (any size, local or remote)."""
    digest, size = hashlib.sha256(), 0
    with epath.Path(path).open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()

"""Durable file primitives of the two privacy ledgers (the coordinator's and each site's) and of the
fingerprints: exclusive creation, appends under an exclusive lock, fsync of files and folders, streaming
hashes. One implementation, so that both ledgers keep the same crash guarantees."""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path
from typing import Any

BLOCK = 1 << 20
"""Bytes read at a time when hashing a file."""


def fsync_dir(path: Path) -> None:
    """Make a file's creation, rename or removal in folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_exclusive(path: Path, mode: int, first_line: bytes = b"") -> None:
    """Create ``path`` holding ``first_line`` (``FileExistsError`` when it exists) and make it durable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        append_durably(fd, first_line)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def open_locked(path: Path) -> int:
    """An ``O_RDWR | O_APPEND`` descriptor of ``path`` under an exclusive ``flock``, across processes; the
    lock goes with the descriptor when it is closed. ``OSError`` as ``os.open`` raises it."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


def append_durably(fd: int, data: bytes) -> None:
    """Write all of ``data`` (at the end, for an ``O_APPEND`` descriptor) and fsync it."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def hash_file_into(digest: Any, path: Path) -> None:
    """Feed the bytes of ``path`` to a hashlib ``digest``, a block at a time."""
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            digest.update(block)


def sha256_file(path: Path) -> str:
    """'sha256:...' of one file's bytes."""
    digest = hashlib.sha256()
    hash_file_into(digest, path)
    return f"sha256:{digest.hexdigest()}"

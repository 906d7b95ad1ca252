"""The sha256 of a photo's content: the one way cened hashes files.

The journal keys every photo by it (duplicates, undo's proof that a file is
unchanged, recovery's proof that a copy is whole), so every module hashes
through these few functions.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

#: Read this much at a time: a video companion may be gigabytes.
CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_stream(fh: BinaryIO) -> str:
    """The hash of an open file from where it stands, a chunk at a time; raises OSError."""
    return hashlib.file_digest(fh, "sha256").hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return sha256_stream(fh)


def sha256_or_none(path: Path) -> str | None:
    """The file's sha256, or None when it cannot be read (gone, no permission)."""
    try:
        return sha256_file(path)
    except OSError:
        return None


def sha256_rewound(fh: BinaryIO) -> str | None:
    """The hash of a whole open file not read into memory, or None when reading it fails."""
    try:
        fh.seek(0)
        return sha256_stream(fh)
    except OSError:
        return None

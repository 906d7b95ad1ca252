"""Folders that cannot be written, made for real, also as root (whom permissions do not stop).

:func:`immutable` leaves a folder's files readable, linkable and copyable but
not removable, or a file readable but not writable: ``chattr +i`` as root,
mode 555 or 444 for anyone else.
:func:`read_only_mount` makes the folder a read-only bind mount of itself,
which is also another mount: a link out of it fails (EXDEV), as across
filesystems.  Each skips the test, with the reason, where it cannot work.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """Nobody, root included, can change ``path``: a folder's files cannot be removed, a file not written.

    Reading, and linking or copying out of a folder, still work.
    """
    if os.geteuid() != 0:
        mode = path.stat().st_mode & 0o7777
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    result = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"chattr +i does not work here: {result.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@contextlib.contextmanager
def read_only_mount(folder: Path) -> Iterator[None]:
    """``folder`` as a read-only bind mount of itself: another mount, so a move out copies."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    result = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {result.stderr.strip()}")
    result = subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True, text=True)
    if result.returncode != 0:
        subprocess.run(["umount", str(folder)], check=True)
        pytest.skip(f"cannot make a bind mount read-only here: {result.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)

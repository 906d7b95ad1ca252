"""Learned versions of the model: kept in the state directory, one of them in use.

A learned version (:class:`Learned`) is small -- a residual head and the
user's examples as prototypes (:mod:`cened.ml.learning`) -- and always sits
on the shipped model it was learned from, named by ``base``.  Versions live
in ``<state>/learned/versions/<version>/``; ``active.json`` names the one in
use and the ones used before it, so ``rollback`` goes back one step.  Every
file is written whole and renamed into place, so the daemon, which polls
``active.json``, never reads half a version.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cened.errors import ModelError, Refused
from cened.ml.learning import Head, Prototypes
from cened.moving import fsync_dirs

#: The name of "no learned version": the shipped model as it is.
SHIPPED = "shipped"
HEAD_FILE = "head.npz"
INFO_FILE = "learned.json"
ACTIVE_FILE = "active.json"
#: Versions never put in use that are kept, newest first, besides every one in the history:
#: the daemon learns by itself, and each learn leaves a version even when it is not used.
KEEP_UNUSED = 10


@dataclass(frozen=True)
class Learned:
    """One learned version: what it adds to the shipped model ``base``, and how it was measured."""

    version: str
    base: str
    head: Head
    prototypes: Prototypes
    created: str = ""
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.head.classes

    def save(self, folder: Path) -> None:
        """Write the version into ``folder`` (which must not exist yet), whole or not at all."""
        tmp = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        np.savez(
            tmp / HEAD_FILE,
            weights=self.head.weights,
            bias=self.head.bias,
            prototypes=self.prototypes.vectors.astype(np.float16),
            offsets=self.prototypes.offsets,
        )
        info = {
            "version": self.version,
            "base": self.base,
            "classes": list(self.head.classes),
            "temperature": self.head.temperature,
            "scale": self.head.scale,
            "created": self.created,
            "report": self.report,
        }
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _fsync_tree(tmp)
        tmp.rename(folder)

    @classmethod
    def load(cls, folder: Path) -> Learned:
        try:
            info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
            with np.load(folder / HEAD_FILE, allow_pickle=False) as z:
                head = Head(
                    tuple(info["classes"]),
                    z["weights"].astype(np.float32),
                    z["bias"].astype(np.float32),
                    float(info["temperature"]),
                    float(info["scale"]),
                )
                prototypes = Prototypes(z["prototypes"].astype(np.float32), z["offsets"].astype(np.float32))
            learned = cls(
                str(info["version"]), str(info["base"]), head, prototypes, info["created"], info["report"]
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"the learned version in {folder} cannot be read: {exc}") from exc
        if head.weights.shape[1] != len(head.classes) or len(prototypes.vectors) != len(prototypes.offsets):
            raise ModelError(f"the learned version in {folder} does not fit together")
        return learned


class VersionStore:
    """``<state>/learned``: the learned versions, and which one the daemon uses."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = root / "versions"
        self.active_file = root / ACTIVE_FILE

    def names(self) -> list[str]:
        if not self.versions.is_dir():
            return []
        return sorted(p.name for p in self.versions.iterdir() if p.is_dir() and not p.name.startswith("."))

    def load(self, version: str) -> Learned:
        folder = self.versions / version
        if not folder.is_dir():
            raise Refused(f"no learned version {version!r} (see `cened model list`)")
        return Learned.load(folder)

    def info(self, version: str) -> dict[str, Any]:
        """A version's ``learned.json`` alone (base, classes, report), without its arrays."""
        path = self.versions / version / INFO_FILE
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path} cannot be read: {exc}") from exc
        if not isinstance(info, dict):
            raise ModelError(f"{path} is not a learned version's description")
        return info

    def add(self, learned: Learned) -> None:
        """Keep ``learned``; then forget the oldest versions never put in use, beyond KEEP_UNUSED."""
        self.versions.mkdir(parents=True, exist_ok=True)
        learned.save(self.versions / learned.version)
        used = set(self.history())
        unused = [name for name in self.names() if name not in used and name != learned.version]
        for name in unused[: max(0, len(unused) + 1 - KEEP_UNUSED)]:
            shutil.rmtree(self.versions / name, ignore_errors=True)

    def history(self) -> list[str]:
        """The versions put in use, oldest first; the last is in use (none: the shipped model).

        An ``active.json`` that cannot be read (damaged, empty, not ours) raises
        :class:`ModelError` saying how to mend it: ``cened model use`` and
        ``rollback`` write a new one.
        """
        try:
            data = json.loads(self.active_file.read_text(encoding="utf-8"))
            history = data["history"] if isinstance(data, dict) else None
            if not isinstance(history, list) or not all(isinstance(v, str) and v for v in history):
                raise ValueError("no list of versions in it")
            return history
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(
                f"{self.active_file} cannot be read ({exc}); `cened model use shipped` (or a version), "
                "or `cened model rollback`, writes a new one"
            ) from exc

    def _history_to_change(self) -> list[str] | None:
        """The history, or None when ``active.json`` cannot be read: changing it writes a new one."""
        try:
            return self.history()
        except ModelError:
            return None

    def active(self) -> str:
        history = self.history()
        return history[-1] if history else SHIPPED

    def stamp(self) -> tuple[int, int] | None:
        """What changes whenever another version is put in use (the daemon polls it)."""
        try:
            st = os.stat(self.active_file)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ino)

    def load_active(self) -> Learned | None:
        """The version in use, or None for the shipped model.

        Whether it fits the shipped model is checked where it is put on one
        (:meth:`cened.ml.classifying.Reading.with_learned`).
        """
        version = self.active()
        return None if version == SHIPPED else self.load(version)

    def use(self, version: str) -> None:
        """Put ``version`` (or ``shipped``) in use."""
        if version != SHIPPED:
            self.load(version)  # refuses a version that is not there or cannot be read
        self._write([*(self._history_to_change() or []), version])

    def rollback(self) -> str:
        """Back to the version in use before this one; returns it (the shipped model when unreadable)."""
        history = self._history_to_change()
        if history is None:
            self._write([SHIPPED])
            return SHIPPED
        if not history or history == [SHIPPED]:
            raise Refused("the shipped model is in use; there is nothing to roll back to")
        previous = history[:-1]
        self._write(previous or [SHIPPED])
        return previous[-1] if previous else SHIPPED

    def _write(self, history: list[str]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.active_file.with_name(f".{ACTIVE_FILE}.tmp")
        data = {"history": history, "changed": datetime.now(UTC).isoformat(timespec="seconds")}
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(data, indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.active_file)


def new_version_name(now: datetime | None = None) -> str:
    return "learned-" + (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")[:-4]


def _fsync_tree(folder: Path) -> None:
    """Make a version's files and their entries last before it is renamed into place."""
    for path in folder.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    fsync_dirs([folder])

"""Thread names the system sees, so that ``top -H``, ``ps -L`` and ``cened bench`` tell them apart.

Python (before 3.14) names its threads only for itself; Linux keeps a name of
up to 15 bytes per thread, which a process may set for its own threads by
writing ``/proc/self/task/TID/comm``.  Elsewhere this does nothing.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

#: Linux keeps this many bytes of a thread's name.
NAME_BYTES = 15


def name_threads() -> None:
    """Give every thread of this process but the main one (whose name is the process's) its Python name."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread():
            name(thread)


def name_current() -> None:
    """Name the calling thread (a thread pool's initializer)."""
    name(threading.current_thread())


def name(thread: threading.Thread) -> None:
    if thread.native_id is None:
        return
    with contextlib.suppress(OSError):  # not Linux, or the thread has just ended
        Path(f"/proc/self/task/{thread.native_id}/comm").write_bytes(thread.name.encode()[:NAME_BYTES])

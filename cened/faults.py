"""Crash and hang points for fault-injection tests: a real SIGKILL at a chosen step.

Random ``kill -9`` from outside rarely lands inside the few milliseconds
between journaling an intent and finishing a move; these points let the
crash tests kill the daemon exactly there.  They do nothing unless
``CENED_CRASH_AT`` names the point (optionally ``name:probability``), which
no user sets; reading the environment once per call keeps no global state.
"""

from __future__ import annotations

import os
import random
import signal
import threading


def crash_point(name: str) -> None:
    spec = os.environ.get("CENED_CRASH_AT")
    if not spec:
        return
    point, _, chance = spec.partition(":")
    if point == name and random.random() < float(chance or 1.0):
        os.kill(os.getpid(), signal.SIGKILL)


def hang_point(name: str, subject: str) -> None:
    """Block for good where ``CENED_HANG_AT`` is ``name:subject``, as a decoder stuck on one photo does."""
    if os.environ.get("CENED_HANG_AT") == f"{name}:{subject}":
        threading.Event().wait()

"""Structured logs: JSON lines for journald and machines, colour for a person at a terminal.

``auto`` picks JSON whenever stdout is not a terminal, which is exactly the
case under systemd, so ``journalctl -u cened -o cat | jq`` works without any
setting.  Standard-library logging (watchdog, TensorFlow) is routed through
the same renderer so one stream carries everything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import BinaryIO, Literal, TextIO

import structlog

LogFormat = Literal["auto", "json", "console"]


def configure(fmt: LogFormat = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Set up structlog and the standard logging bridge; safe to call again on reload.

    The daemon logs to stdout, which systemd hands to the journal.  One-shot
    commands whose stdout is their result (``classify --json``, ``bench
    --json``) pass ``sys.stderr``, so a log line can never corrupt it.
    """
    stream = stream or sys.stdout
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.add_logger_name,
    ]
    if use_json:
        shared.append(structlog.processors.format_exc_info)
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=shared,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)


#: The prefixes TensorFlow Lite's own logger writes, and the level each becomes.
_NATIVE_LEVELS = {"ERROR:": "error", "WARNING:": "warning", "INFO:": "info", "VERBOSE:": "debug"}
#: TensorFlow's absl lines start with a severity letter and the date: ``I0000 00:00:…``.
_ABSL_LEVEL = re.compile(r"^([IWEF])\d{4} ")
_ABSL_LEVELS = {"I": "info", "W": "warning", "E": "error", "F": "critical"}


def _native_level(line: str) -> tuple[str, str]:
    """The log level a native stderr line deserves, and the line without its level prefix."""
    prefix = line.split(" ", 1)[0]
    if prefix in _NATIVE_LEVELS:
        return _NATIVE_LEVELS[prefix], line.removeprefix(prefix).strip()
    absl = _ABSL_LEVEL.match(line)
    if absl:
        return _ABSL_LEVELS[absl.group(1)], line
    return "warning", line


def _anonymous_file() -> BinaryIO:
    """A file with no name: in memory where Linux allows, so a read-only /tmp cannot stop the daemon."""
    if hasattr(os, "memfd_create"):
        return open(os.memfd_create("cened-stderr"), "w+b")
    return tempfile.TemporaryFile()


@contextlib.contextmanager
def native_stderr_logged(logger: str) -> Iterator[None]:
    """Re-emit what native code prints on file descriptor 2 meanwhile as log events.

    LiteRT announces its XNNPACK delegate with a bare ``INFO: ...`` line on
    stderr, and no setting silences it; under systemd that line lands in the
    journal between the JSON lines, where plain ``jq`` stops reading.  Meant
    for loading a model, while no other thread writes: fd 2 belongs to the whole
    process, so anything else printed meanwhile is captured too -- and logged
    when the block ends, never lost.
    """
    log = structlog.get_logger(logger)
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to keep apart
        yield
        return
    try:
        sink = _anonymous_file()
    except OSError:  # nowhere to keep its lines: leave stderr as it is
        os.close(saved)
        yield
        return
    with sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                if line.strip():
                    level, message = _native_level(line.strip())
                    getattr(log, level)("runtime-said", message=message)

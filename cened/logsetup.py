"""Structured logs: JSON lines for journald and machines, colour for a person at a terminal.

``auto`` picks JSON whenever stdout is not a terminal, which is exactly the
case under systemd, so ``journalctl -t cened -o cat | jq`` works without any
setting.  Standard-library logging (watchdog, TensorFlow) is routed through
the same renderer so one stream carries everything.

When the stream *is* systemd's connection to the journal, each line starts
with a ``<N>`` syslog priority, which journald strips and stores
(``SyslogLevelPrefix=yes``, its default): ``-o cat`` stays pure JSON and
``journalctl -p err`` finds the errors.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from types import TracebackType
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
    use_json = uses_json(fmt, stream)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty(), pad_event=20)
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        # A person at a terminal reads the local time of day; machines get the full UTC instant.
        structlog.processors.TimeStamper(fmt="iso", utc=True)
        if use_json
        else structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False),
        structlog.stdlib.add_logger_name,
    ]
    if use_json:
        shared.append(structlog.processors.format_exc_info)
    else:
        shared.append(_for_a_person)
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=False,
    )
    formatter: logging.Formatter = structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=shared,
    )
    if is_journal(stream):
        formatter = _PriorityPrefix(formatter)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # Python warnings (Pillow's "Corrupt EXIF data", thousands in a run) as log events, not raw lines.
    logging.captureWarnings(True)
    if use_json:
        # A traceback printed by Python itself would be the one non-JSON text in the journal.
        sys.excepthook = _uncaught
        threading.excepthook = _uncaught_in_thread


def uses_json(fmt: LogFormat, stream: TextIO | None = None) -> bool:
    """Whether logs to ``stream`` (stdout) are JSON lines: asked for, or ``auto`` and not a terminal."""
    return fmt == "json" or (fmt == "auto" and not (stream or sys.stdout).isatty())


#: Fields only a machine reads whole: the settings dumped at start and reload (JSON logs keep them).
_MACHINE_FIELDS = ("config",)


def _for_a_person(
    _logger: object, _method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """A console line without the fields that would fill a screen (``config`` is in the config file)."""
    for name in _MACHINE_FIELDS:
        event.pop(name, None)
    return event


def _uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    structlog.get_logger("cened").critical("uncaught-exception", exc_info=(kind, exc, tb))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    structlog.get_logger("cened").critical(
        "uncaught-exception",
        thread=args.thread.name if args.thread else None,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def is_journal(stream: TextIO) -> bool:
    """Whether ``stream`` is systemd's connection to the journal.

    systemd names that socket in ``$JOURNAL_STREAM`` (``device:inode``); the
    variable alone is not enough, since children inherit it with their output
    redirected elsewhere (a pipe, a file), where a ``<N>`` prefix would be noise.
    """
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False


def syslog_priority(levelno: int) -> int:
    """The syslog(3) priority of a logging level: 2 critical, 3 error, 4 warning, 6 info, 7 debug."""
    for threshold, priority in ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4)):
        if levelno >= threshold:
            return priority
    return 6 if levelno >= logging.INFO else 7


def journal_line(priority: int, text: str) -> str:
    """``text`` with journald's ``<N>`` priority prefix on each line, for a stream that is the journal.

    Every line, not just the first: journald reads each line as its own entry,
    so a console traceback would otherwise be half at the right priority.
    """
    return "\n".join(f"<{priority}>{line}" for line in text.split("\n"))


#: What a terminal would act on rather than show (C0, DEL, C1), and bytes not UTF-8 (surrogate escapes).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\udc80-\udcff]")
_SHORT_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def printable(text: str) -> str:
    """``text`` with control characters shown escaped (``\\x1b``), as every name cened prints is.

    A file named ``esc\\e[31mred.jpg`` must not turn a terminal red, nor a
    newline in a name forge a line of output.
    """

    def escape(match: re.Match[str]) -> str:
        char = match[0]
        code = ord(char) - 0xDC00 if char >= "\udc80" else ord(char)
        return _SHORT_ESCAPES.get(char, f"\\x{code:02x}")

    return _UNPRINTABLE.sub(escape, text)


def print_failure(lines: Sequence[str], exit_code: int, stream: TextIO | None = None) -> None:
    """Say why a command stops: ``cened: ...`` lines, or error events when the stream is the journal.

    Under systemd a start-up failure (a bad config, an unwritable folder) or a
    refused ``cened reload`` is read with ``journalctl -t cened -o cat | jq``
    and found with ``-p err``, so there it is a JSON line like any other.
    """
    stream = stream or sys.stderr
    if not is_journal(stream):
        for line in lines:
            print(f"cened: {printable(line)}", file=stream)
        return
    now = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
    for line in lines:
        event = {"event": "failed", "error": line, "exit_code": int(exit_code), "level": "error"}
        text = json.dumps({**event, "timestamp": now, "logger": "cened.cli"}, ensure_ascii=False)
        print(journal_line(syslog_priority(logging.ERROR), text), file=stream)
    stream.flush()


class _PriorityPrefix(logging.Formatter):
    """Another formatter's lines, each with the record's syslog priority in front for journald."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return journal_line(syslog_priority(record.levelno), self._inner.format(record))


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

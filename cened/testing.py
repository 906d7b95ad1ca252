"""Photos and a running daemon, as the benchmark and the tests need them.

:func:`image_set` makes (once, then keeps) deterministic JPEGs that cost what
camera photos cost to decode, optionally with the EXIF preview phones embed, or
the same pictures as HEIC files, optionally with the thumbnail iPhones embed.
:class:`DaemonProcess` runs ``cened run`` in a subprocess and follows its
JSON log lines.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

#: Bump when :func:`synthetic_photo` changes, so cached images are regenerated.
GENERATOR = 2
JPEG_QUALITY = 90
SMALL = (150, 150)
LARGE = (4000, 3000)
#: The EXIF preview written into the large photos, as phones embed one
#: (cameras that store only 160x120 get the full decode: see ``thumbnail_min_side``).
PREVIEW = (320, 240)
#: HEIC quality: about the bytes per 12 megapixels that iPhones write (2-3 MB).
HEIC_QUALITY = 50
#: HEIC grid tile side: iPhones store a 12 MP photo as a grid of 512 px tiles.
HEIC_TILE = 512


def synthetic_picture(seed: int, size: tuple[int, int]) -> Image.Image:
    """The pixels of :func:`synthetic_photo`: a sky-like gradient, a wavy texture and sensor-like noise."""
    from PIL import Image

    width, height = size
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    top, bottom = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    fx, fy, phase_x, phase_y = (
        rng.uniform(3, 40),
        rng.uniform(3, 40),
        rng.uniform(0, 6.3),
        rng.uniform(0, 6.3),
    )
    texture = np.sin(2 * np.pi * fx * x * (1 + 0.3 * y) + phase_x) * np.sin(
        2 * np.pi * fy * y + 3 * x + phase_y
    )
    pixels = np.empty((height, width, 3), np.uint8)
    for c in range(3):
        channel = top[c] + (bottom[c] - top[c]) * y + 25 * texture + (x - 0.5) * rng.uniform(-40, 40)
        channel = channel + rng.standard_normal((height, width), dtype=np.float32) * 10
        pixels[..., c] = np.clip(channel, 0, 255)
    return Image.fromarray(pixels, "RGB")


def synthetic_photo(seed: int, size: tuple[int, int], preview: tuple[int, int] | None = None) -> bytes:
    """A JPEG that costs what a camera photo costs to decode.

    Flat colour would compress to almost nothing and decode unrealistically
    fast; a sky-like gradient, a wavy texture and sensor-like noise give the
    3-6 MB per 12 megapixels that phones produce at quality 90.
    """
    from PIL import Image

    photo = synthetic_picture(seed, size)
    exif = b""
    if preview is not None:
        small = io.BytesIO()
        photo.resize(preview, Image.Resampling.BILINEAR).save(small, "JPEG", quality=85)
        exif = exif_with_preview(small.getvalue())
    out = io.BytesIO()
    photo.save(out, "JPEG", quality=JPEG_QUALITY, exif=exif)
    return out.getvalue()


def synthetic_heic(seed: int, size: tuple[int, int], thumbnail: tuple[int, int] | None = None) -> bytes:
    """:func:`synthetic_photo`'s picture as an iPhone writes it: HEIC, a grid of tiles, maybe a thumbnail.

    ``thumbnail`` is the size of the HEIF thumbnail item (iPhones store 320x240).
    x265's fastest preset keeps making a few dozen 12 MP files bearable.
    """
    import io

    import pillow_heif

    pillow_heif.register_heif_opener()  # for saving; it leaves the options cened.ml.imaging chose
    out = io.BytesIO()
    synthetic_picture(seed, size).save(
        out,
        "HEIF",
        quality=HEIC_QUALITY,
        tile_size=HEIC_TILE,
        thumbnails=[max(thumbnail)] if thumbnail else [],
        enc_params={"preset": "ultrafast"},
    )
    return out.getvalue()


def exif_with_preview(preview_jpeg: bytes, orientation: int = 1) -> bytes:
    """An EXIF block holding ``orientation`` and a JPEG preview, as a camera writes it.

    Pillow reads EXIF previews but cannot write one (its ``Exif.tobytes`` has
    no IFD1), so the few bytes of TIFF structure are put together here: IFD0
    with the orientation, IFD1 pointing at the preview, then the preview.
    Pass the result as ``exif=`` to Pillow's JPEG ``save``.
    """
    import struct

    ifd0 = struct.pack("<HHHIHHI", 1, 0x0112, 3, 1, orientation, 0, 26)  # next IFD at 26
    preview_at = 26 + 2 + 3 * 12 + 4
    entries = [(0x0103, 3, 1, 6), (0x0201, 4, 1, preview_at), (0x0202, 4, 1, len(preview_jpeg))]
    ifd1 = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd0 + ifd1 + struct.pack("<I", 0) + preview_jpeg
    return b"Exif\x00\x00" + tiff


def image_set(
    cache: Path,
    size: tuple[int, int],
    count: int,
    preview: tuple[int, int] | None = None,
    say: Callable[[str], None] | None = None,
    heic: bool = False,
) -> list[Path]:
    """``count`` deterministic photos of ``size``, generated once and kept in ``cache``.

    JPEGs with ``preview`` in their EXIF block, or with ``heic`` HEIC files with a
    thumbnail item of that size.  ``say`` hears, once, that photos are being made
    (it can take a while, HEIC files above all).
    """
    tag = f"-p{preview[0]}x{preview[1]}" if preview else ""
    kind = f"heic-q{HEIC_QUALITY}" if heic else f"q{JPEG_QUALITY}"
    folder = cache / f"{size[0]}x{size[1]}-{kind}-g{GENERATOR}{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{seed:04d}.{'heic' if heic else 'jpg'}" for seed in range(count)]
    missing = [f for f in files if not f.is_file()]
    if missing and say is not None:
        say(f"generating {len(missing)} photos of {size[0]}x{size[1]} in {folder} (once)")
    for path in missing:
        tmp = path.with_suffix(".tmp")
        make = synthetic_heic if heic else synthetic_photo
        tmp.write_bytes(make(int(path.stem), size, preview))
        tmp.replace(path)
    return files


# -- the daemon as a subprocess ------------------------------------------------------


#: How long the reader lets the daemon's log lines gather in the pipe between reads.
#: Kinds of :func:`unlike_photos`: content that is none of the landscape classes.
UNLIKE_KINDS = ("documents", "screens", "plain")
_WORDS = (
    "invoice",
    "total",
    "amount",
    "due",
    "date",
    "payment",
    "account",
    "meeting",
    "agenda",
    "report",
    "summary",
    "results",
    "settings",
    "file",
    "edit",
    "view",
    "help",
    "window",
    "search",
    "user",
    "profile",
    "password",
    "login",
    "cancel",
    "save",
    "open",
    "close",
    "dear",
    "regards",
    "please",
    "attached",
    "thank",
    "you",
    "project",
    "status",
    "update",
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "on",
    "with",
    "as",
    "by",
    "this",
)


def unlike_photos(folder: Path, per_kind: int = 20, seed: int = 0) -> list[Path]:
    """JPEGs of things that are no landscape, made here: text pages, screenshots, flat colours and noise.

    Far from the training photos in a way no data set we hold is: tests and
    ``cened evaluate --ood`` use them beside real photos of pets and clothes.
    """
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)

    def colour(light: bool | None = None) -> tuple[int, int, int]:
        lo, hi = (0, 256) if light is None else ((200, 256) if light else (0, 70))
        r, g, b = (int(v) for v in rng.integers(lo, hi, 3))
        return r, g, b

    def words(n: int) -> str:
        return " ".join(rng.choice(_WORDS, n))

    def document(i: int) -> Image.Image:
        w, h = [(850, 1100), (600, 800), (1100, 850), (400, 600)][i % 4]
        image = Image.new("RGB", (w, h), colour(True))
        draw, ink = ImageDraw.Draw(image), colour(False)
        size, y = int(rng.integers(max(9, w // 60), max(12, w // 28))), h // 16
        font = ImageFont.load_default(size)
        draw.text((w // 12, y), words(4).title(), fill=ink, font=ImageFont.load_default(size * 2))
        y += size * 3
        while y < h * 0.92:
            draw.text((w // 12, y), words(int(rng.integers(3, 12))), fill=ink, font=font)
            y += int(size * rng.uniform(1.3, 1.8))
        return image

    def screen(i: int) -> Image.Image:
        w, h = [(1280, 800), (390, 844), (1024, 768), (1440, 900)][i % 4]
        dark = bool(rng.random() < 0.4)
        back, ink, accent = colour(not dark), colour(dark), colour()
        image = Image.new("RGB", (w, h), back)
        draw = ImageDraw.Draw(image)
        bar = max(18, h // 30)
        draw.rectangle((0, 0, w, bar), fill=accent)
        draw.text((bar * 3, 2), words(3), fill=ink, font=ImageFont.load_default(bar - 6))
        side = int(w * rng.uniform(0.15, 0.3))
        draw.rectangle((0, bar, side, h), fill=colour(dark))
        font, y = ImageFont.load_default(max(10, bar // 2 + 4)), bar + 8
        while y < h - bar:
            if rng.random() < 0.15:
                draw.rounded_rectangle((side + 10, y, side + 130, y + bar), radius=5, fill=accent)
            else:
                draw.text((side + 10, y), words(int(rng.integers(2, 10))), fill=ink, font=font)
            y += int(bar * 1.4)
        return image

    def plain(i: int) -> Image.Image:
        w, h = [(224, 224), (640, 480), (300, 200), (150, 150)][i % 4]
        kind = i % 3
        if kind == 0:
            return Image.new("RGB", (w, h), colour())
        if kind == 1:
            t = np.linspace(0.0, 1.0, w)[None, :, None]
            a, b = np.array(colour(), float), np.array(colour(), float)
            return Image.fromarray(np.broadcast_to(a + (b - a) * t, (h, w, 3)).astype(np.uint8))
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

    makers = {"documents": document, "screens": screen, "plain": plain}
    paths = []
    for kind in UNLIKE_KINDS:
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_kind):
            path = folder / kind / f"{kind}-{i:03d}.jpg"
            makers[kind](i).save(path, "JPEG", quality=int(rng.integers(75, 96)))
            paths.append(path)
    return paths


READ_GAP_S = 0.01


def _stamped(event: dict[str, Any], now: float, wall: float) -> float:
    """When the daemon wrote ``event``, on the monotonic clock of ``now`` (read at wall time ``wall``)."""
    try:
        written = datetime.fromisoformat(event["timestamp"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return now
    return now - max(0.0, wall - written)


def _event(raw: bytes) -> dict[str, Any]:
    """One log line as its JSON object, or as ``{"event": "raw", "line": ...}`` when it is not one."""
    try:
        event = json.loads(raw)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        return {"event": "raw", "line": raw.decode(errors="replace").rstrip()}
    return event


class DaemonProcess:
    """``cened run --config config`` in a subprocess, its progress read from its JSON log lines.

    The daemon gets this process's environment without its ``CENED_*``
    variables (the config file says what the daemon is to do), then ``env``.
    Every line is kept in :attr:`events`; photos filed or quarantined are
    noted in :attr:`done_at`, dated by the daemon's own timestamps.
    """

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("CENED_")}
        full_env = {**inherited, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
        self.spawned = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cened", "--config", str(config), "run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
        self._cond = threading.Condition()
        self.events: list[dict[str, Any]] = []  # every line so far, in order
        self._first: dict[str, dict[str, Any]] = {}  # the first event of each name
        self.started: tuple[float, dict[str, Any]] | None = None
        self.done_at: dict[str, float] = {}  # inbox path -> when its filed/quarantined line was written
        self._awaited: set[str] = set()  # inbox paths a waiter wants; it is woken when none is left
        self.problems: list[dict[str, Any]] = []
        self._ended = False  # the reader has seen the end of the output
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        """Note the lines in the batches they come in, waking a waiter only when what it waits for has come.

        The benchmark shares the cores with the daemon it times, so reading
        must cost little: waking the waiter for every line, to check every
        photo of the burst again, grows with the square of the burst.  Lines
        are left to gather for ``READ_GAP_S`` instead, and each is dated by the
        daemon's own timestamp, so the gathering does not delay the figures.
        """
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        rest = b""
        while chunk := os.read(fd, 1 << 20):
            now, wall = time.monotonic(), time.time()
            *lines, rest = (rest + chunk).split(b"\n")
            wake = False
            with self._cond:
                for raw in lines:
                    event = _event(raw)
                    wake |= self._note(_stamped(event, now, wall), event)
                if wake:
                    self._cond.notify_all()
            time.sleep(READ_GAP_S)
        with self._cond:
            if rest.strip():  # a last line without its newline
                self._note(time.monotonic(), _event(rest))
            self._ended = True
            self._cond.notify_all()

    def _note(self, now: float, event: dict[str, Any]) -> bool:
        """Record one log event; True when a waiter may now have what it waits for."""
        self.events.append(event)
        name = event.get("event")
        wake = False
        if isinstance(name, str) and name not in self._first:
            self._first[name] = event
            wake = True
        if name == "started":
            self.started = (now, event)
        elif name in ("filed", "quarantined", "duplicate"):  # every way out of the inbox
            self.done_at[event["file"]] = now
            if name == "quarantined":
                self.problems.append(event)
            if event["file"] in self._awaited:
                self._awaited.discard(event["file"])
                wake |= not self._awaited
        elif name in ("not-moved", "batch-failed"):
            self.problems.append(event)
        return wake

    def said(self, lines: int = 40) -> list[str]:
        """The last ``lines`` lines, as event names (or the text of lines that were not JSON)."""
        return [str(e.get("line") or e.get("event")) for e in self.events[-lines:]]

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Return once ``condition()`` holds, checked whenever the reader wakes the waiter.

        RuntimeError, with the daemon's last lines, after ``timeout`` seconds
        or once its output has ended without it.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0 or self._ended:
                    raise RuntimeError(
                        f"daemon: no {what} within {timeout:g}s; it said:\n" + "\n".join(self.said())
                    )
                self._cond.wait(min(left, 0.5))

    def wait_for(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        """The first event called ``name``, once it has come."""
        self.wait(lambda: name in self._first, timeout, f"{name!r} event")
        return self._first[name]

    def wait_done(self, keys: Sequence[str], timeout: float, what: str) -> list[float]:
        """When each of ``keys`` (inbox paths) was filed or quarantined, once all of them were."""
        with self._cond:
            self._awaited = {k for k in keys if k not in self.done_at}
        try:
            self.wait(lambda: not self._awaited, timeout, what)
        finally:
            with self._cond:
                self._awaited = set()
        return [self.done_at[k] for k in keys]

    def wait_started(self) -> float:
        """Seconds from process start to the ``started`` line (READY)."""
        self.wait(lambda: self.started is not None, 180, "start")
        assert self.started is not None
        return self.started[0] - self.spawned

    def cpu_seconds(self) -> float | None:
        """User + system CPU of the daemon so far, all threads (Linux ``/proc``; None elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self, timeout: float = 15.0, *, or_kill: bool = False) -> int:
        """SIGTERM, then the exit code once the daemon has ended.

        A daemon still running after ``timeout`` seconds raises
        :class:`subprocess.TimeoutExpired`, or with ``or_kill`` is killed.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            if not or_kill:
                raise
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)

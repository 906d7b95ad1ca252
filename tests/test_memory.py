"""Memory: whatever is dropped in the inbox, the process stays under 1 GiB.

Decoding is costed in bytes from each file's header before any pixel is
decoded, and the decodes in flight share one budget.  The worst inputs found
so far are made here, small on disk: a BLP header claiming a huge picture,
a 16-bit PNG and a 99-megapixel RGBA PNG of one colour, a progressive JPEG
(which keeps every coefficient whatever the draft scale), a lossless WebP
and a GIF of many megapixels.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import COLOURS, write_config
from daemon_helpers import DaemonProcess, files_under
from PIL import Image
from test_poison import dds_with_unknown_pixel_format

from cened.bench.photos import synthetic_photo
from cened.config import Settings, shipped_model_dir
from cened.ml import imaging
from cened.pipeline import Verdict, prepare

GIB = 2**30

# -- the budget ----------------------------------------------------------------


def test_budget_bounds_the_decodes_in_flight_together() -> None:
    budget = imaging.MemoryBudget(100)
    lock = threading.Lock()
    held = peak = 0

    def decode(amount: int) -> None:
        nonlocal held, peak
        with budget.hold(amount):
            with lock:
                held += amount
                peak = max(peak, held)
            time.sleep(0.002)
            with lock:
                held -= amount

    threads = [threading.Thread(target=decode, args=(10 + (i * 37) % 60,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert 60 < peak <= 100 and budget.used == 0, peak
    with pytest.raises(imaging.Rejected) as caught, budget.hold(101):
        pass
    assert caught.value.reason == "too-large"


def test_budget_serves_in_turn_so_a_large_decode_is_not_starved() -> None:
    budget = imaging.MemoryBudget(100)
    order: list[str] = []
    first = budget.hold(60)
    first.__enter__()

    def take(name: str, amount: int) -> None:
        with budget.hold(amount):
            order.append(name)

    large = threading.Thread(target=take, args=("large", 80))
    large.start()
    time.sleep(0.05)  # the large one is waiting: 60 + 80 > 100
    small = threading.Thread(target=take, args=("small", 10))
    small.start()
    time.sleep(0.05)
    assert order == []  # the small one would fit, but it is not its turn
    first.__exit__(None, None, None)
    large.join(timeout=5)
    small.join(timeout=5)
    assert order == ["large", "small"]


def test_what_cannot_fit_the_budget_is_quarantined_as_too_large(settings: Settings, classifier) -> None:
    path = settings.inbox / "wide.png"
    Image.new("RGBA", (4000, 3000), (10, 200, 30, 128)).save(path)
    small = settings.model_copy(update={"decode_memory_mb": 16})
    prep = prepare(path, small, classifier.meta.input_size)
    assert (prep.verdict, prep.reason) == (Verdict.REJECTED, "too-large"), prep
    assert "decode_memory_mb" in (prep.detail or "") and prep.sha256 is not None
    assert prepare(path, settings, classifier.meta.input_size).verdict == Verdict.DECODED


# -- large images are shrunk a strip at a time, to the same pixels -------------------


def _direct(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """What decoding gave before large images were shrunk in strips: the whole image turned and converted."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return imaging.fit(imaging.upright_rgb(im), size[1], size[0])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "I;16", "P"])
def test_large_images_give_the_pixels_of_the_direct_way(mode: str) -> None:
    photo = Image.open(io.BytesIO(synthetic_photo(3, (2400, 1600))))
    if mode == "I;16":
        photo = Image.fromarray(np.asarray(photo.convert("L")).astype(np.uint16) * 257)
    elif mode == "RGBA":
        photo = photo.convert("RGBA")
        photo.putalpha(Image.linear_gradient("L").resize(photo.size))
    else:
        photo = photo.convert(mode)
    buf = io.BytesIO()
    photo.save(buf, "PNG")
    for size in ((224, 224), (32, 32), (200, 300)):
        new, old = imaging.decode(buf.getvalue(), size), _direct(buf.getvalue(), size)
        diff = np.abs(new.astype(int) - old.astype(int))
        assert diff.mean() < 1.5, (mode, size, diff.mean())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_large_turned_images_are_turned(orientation: int) -> None:
    # Stored left half forest, right half sea; each EXIF orientation must give what the direct way gives.
    arr = np.zeros((1200, 2400, 3), np.uint8)
    arr[:, :1200] = COLOURS["forest"]
    arr[:, 1200:] = COLOURS["sea"]
    arr[:100, :100] = 255  # a white corner, so flips show too
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", exif=exif)
    new, old = imaging.decode(buf.getvalue(), (64, 48)), _direct(buf.getvalue(), (64, 48))
    assert np.abs(new.astype(int) - old.astype(int)).mean() < 2


# -- the worst inputs, and the peak they cause -----------------------------------


def _blp_claiming(width: int, height: int) -> bytes:
    """A BLP2 header claiming ``width`` x ``height`` DXT5 pixels, and almost nothing after it."""
    header = (
        b"BLP2" + struct.pack("<i", 1) + struct.pack("<4B", 2, 8, 7, 0) + struct.pack("<2I", width, height)
    )
    offsets = struct.pack("<16I", 1172, *[0] * 15) + struct.pack("<16I", 64, *[0] * 15)
    return header + offsets + bytes(1024) + bytes(64)


@pytest.fixture(scope="module")
def worst(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The worst inputs, each under a name with an extension the daemon takes; name -> expected verdict."""
    folder = tmp_path_factory.mktemp("worst")
    (folder / "blp.jpg").write_bytes(_blp_claiming(10_000, 9_999))
    (folder / "dds.jpg").write_bytes(dds_with_unknown_pixel_format())
    Image.new("I;16", (9999, 9999), 40_000).save(folder / "deep.png", compress_level=1)
    Image.new("RGBA", (11_000, 9_000), (20, 200, 30, 128)).save(folder / "rgba.png", compress_level=1)
    Image.new("RGB", (8000, 6000), (30, 60, 200)).save(folder / "progressive.jpg", progressive=True)
    Image.new("RGBA", (16_000, 6_000), (30, 60, 200, 100)).save(folder / "huge.webp", lossless=True)
    Image.new("RGB", (10_000, 10_000), (200, 60, 20)).save(folder / "big.gif")
    # Copies, so that several of the largest are decoding at once.
    shutil.copy(folder / "rgba.png", folder / "rgba-2.jpg")
    shutil.copy(folder / "deep.png", folder / "deep-2.tif")
    expected = {
        "blp.jpg": "unsupported",
        "dds.jpg": "unsupported",
        "huge.webp": "decompression-bomb",  # 96 MP of one colour in 4 KB
        **{
            name: "decoded"
            for name in ("deep.png", "deep-2.tif", "rgba.png", "rgba-2.jpg", "progressive.jpg")
        },
        "big.gif": "decoded",
    }
    assert sorted(expected) == sorted(p.name for p in folder.iterdir())
    assert sum(p.stat().st_size for p in folder.iterdir()) < 8 * 2**20
    return {str(folder / name): verdict for name, verdict in expected.items()}


# The peak is read from /proc (VmHWM), which belongs to this program: getrusage's
# ru_maxrss would carry over the test process's own peak through fork and exec.
_PEAK = """
import sys
from pathlib import Path
from cened.cli import main
code = main(sys.argv[1:])
hwm = [line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:")]
print("peak-rss-kib", hwm[0].split()[1], file=sys.stderr)
sys.exit(code)
"""


def _verdict(row: dict[str, object]) -> str:
    return "decoded" if "label" in row else str(row.get("error"))


@pytest.mark.slow
def test_classify_stays_under_a_gib_on_the_worst_inputs(
    tmp_path: Path, settings: Settings, worst: dict[str, str]
) -> None:
    """``cened classify`` on all of them, four decoding threads, the shipped model."""
    config = write_config(tmp_path / "cened.toml", settings, model=shipped_model_dir(), decode_threads=4)
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK, "--config", str(config), "classify", "--json", *worst],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    rows = {row["file"]: _verdict(row) for row in map(json.loads, proc.stdout.splitlines())}
    assert rows == worst, proc.stderr[-2000:]
    (peak_line,) = [line for line in proc.stderr.splitlines() if line.startswith("peak-rss-kib")]
    peak = int(peak_line.split()[1]) * 1024
    assert peak <= GIB, f"cened classify peaked at {peak / 2**20:.0f} MiB on the worst inputs"
    print(f"cened classify peak RSS on the worst inputs: {peak / 2**20:.0f} MiB")


@pytest.mark.slow
def test_daemon_stays_under_a_gib_on_the_worst_inputs(
    tmp_path: Path, settings: Settings, worst: dict[str, str]
) -> None:
    """The same inputs dropped at once into a running daemon's inbox, which files every one."""
    config = write_config(tmp_path / "cened.toml", settings, model=shipped_model_dir(), decode_threads=4)
    daemon = DaemonProcess(config)
    try:
        daemon.wait_for("started", timeout=120)
        dropped = []
        for source in worst:
            target = settings.inbox / Path(source).name
            shutil.copy(source, target)
            dropped.append(str(target))
        daemon.wait_done(dropped, timeout=240, what="all the worst inputs filed")
        peak = daemon.peak_rss_mib()
    finally:
        assert daemon.stop() == 0
    assert files_under(settings.inbox) == []
    quarantined = {Path(e["file"]).name: e["reason"].split(":")[0] for e in daemon.problems}
    assert quarantined == {Path(k).name: v for k, v in worst.items() if v != "decoded"}
    assert peak <= 1024, f"the daemon peaked at {peak:.0f} MiB on the worst inputs"
    print(f"cened run peak RSS on the worst inputs: {peak:.0f} MiB")

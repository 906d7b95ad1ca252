"""Run cened's light code paths in a process where TensorFlow and Keras cannot be imported.

``python tests/without_tensorflow.py CONFIG WORKDIR STEP...`` prints one JSON
object: each step's exit code and what it printed, and whether TensorFlow or
Keras ended up imported.  A finder in front of every other one refuses them,
as the light install (no ``[train]`` extra) would, so a stray import fails the
step instead of going unnoticed.  Used by ``tests/test_light_install.py``.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import io
import json
import sys
from pathlib import Path

BLOCKED = ("tensorflow", "keras", "tf_keras")


class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: the light install)", name=name)


sys.meta_path.insert(0, _Refuse())
sys.path.insert(0, str(Path(__file__).parent))


def _cli(*words: str) -> dict[str, object]:
    from cened.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(words))
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()}


def _daemon(config: Path, work: Path) -> dict[str, object]:
    from conftest import write_photo
    from daemon_helpers import RunningDaemon, wait_until

    from cened.config import load_settings

    settings = load_settings(config)
    with RunningDaemon(settings) as daemon:
        write_photo(work / "drop" / "sea.jpg", "sea", seed=3).rename(settings.inbox / "sea.jpg")
        filed = wait_until(lambda: daemon.filed >= 1, timeout=60)
    return {"code": 0 if filed else 1, "out": "", "err": ""}


def _review(config: Path) -> dict[str, object]:
    """The review page and a thumbnail, over HTTP, from a server in this process."""
    import threading
    import urllib.request

    from cened.config import load_settings
    from cened.journal import Journal
    from cened.review import ReviewServer

    settings = load_settings(config)
    with Journal(settings.database, readonly=True) as journal:
        row = journal.history(limit=1)[0]
    server = ReviewServer(settings)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        with (
            urllib.request.urlopen(server.url) as page,
            urllib.request.urlopen(f"{server.url}thumb/{row.id}") as t,
        ):
            ok = page.status == 200 and t.status == 200 and t.read()[:2] == b"\xff\xd8"
    finally:
        server.close()
        thread.join(timeout=10)
    return {"code": 0 if ok else 1, "out": "", "err": ""}


def main() -> None:
    config, work, steps = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    c = ["--config", str(config)]
    runs = {
        "classify": lambda: _cli(*c, "classify", str(work / "photos")),
        "apply": lambda: _cli(*c, "classify", str(work / "photos"), "--apply"),
        "learn": lambda: _cli(*c, "album", "add", "magenta", str(work / "magenta")),
        "daemon": lambda: _daemon(config, work),
        "review": lambda: _review(config),
        "bench": lambda: _cli(*c, "bench", "--quick", "--json", "--cache", str(work / "cache")),
        "train": lambda: _cli("train", "--data", str(work / "photos"), "--out", str(work / "model")),
        "evaluate": lambda: _cli("evaluate", "--data", str(work / "photos"), "--model", str(work / "m")),
    }
    results = {step: runs[step]() for step in steps}
    loaded = sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED))
    print(json.dumps({"steps": results, "loaded": loaded}))


if __name__ == "__main__":
    main()

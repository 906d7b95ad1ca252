"""``cened review``: a local web page for the photos that need a person.

The page shows the photos in the review and other albums and those filed
recently, as thumbnails with the model's top guesses; one click files a
photo into the right album (or a new one) and another undoes a move.  Both
go through :mod:`cened.undoing` exactly as ``cened correct`` and ``cened
undo`` do, so a photo filed here is a ``corrected`` row with a human label,
which ``cened learn`` learns from, and the daemon's library follower finds
the move already journaled (intent before move), so the page is safe beside
a running daemon.

The server is Flask on waitress (a pure-Python production WSGI server, one
thread per request, each with its own journal connection).  It is meant for
the person at this machine, and guarded as such:

* it binds to 127.0.0.1 unless told otherwise;
* every URL starts with a random token (``secrets.token_urlsafe``), so no
  other local user or web page can guess one; a wrong token is a 404;
* the Host header must name this server (no DNS rebinding), and a request
  that changes something must be a POST carrying the token in a form field
  and, when the browser sends them, an Origin of this server and a
  Sec-Fetch-Site of same-origin: another site cannot submit the forms;
* photos are served by row id only, never by path, and a file whose real
  path (links resolved) is outside the library is refused.

The charts are SVG drawn by the template itself: a bar chart of rectangles
needs no plotting library (matplotlib would add some 86 MB to the install).
"""

from __future__ import annotations

import hmac
import io
import os
import secrets
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog
from flask import Flask, Response, abort, redirect, render_template, request, url_for

from cened import undoing
from cened.config import Settings
from cened.errors import CenedError
from cened.journal import FILING_ACTIONS, Action, Entry, Journal
from cened.library import Places, current_rows

log = structlog.get_logger("cened.review")

#: The long side of a thumbnail, in pixels (shown at half that on a sharp screen).
THUMB_SIDE = 320
#: Photos filed recently that the page shows, newest first.
RECENT = 60
#: Days the "photos per album" chart covers.
CHART_DAYS = 14
#: Bins of the confidence histogram, over 0..1.
CONFIDENCE_BINS = 20


@dataclass(frozen=True)
class Card:
    """One photo on the page: its row as it stands now, and what the model guessed."""

    row: Entry
    guesses: list[tuple[str, str, float]]  # (label, its album, probability), best first

    @property
    def name(self) -> str:
        return self.row.destination.name if self.row.destination else self.row.source.name


def make_app(settings: Settings, token: str, allowed_hosts: set[str] | None) -> Flask:
    """The review page's WSGI app, every URL below ``/<token>/``.

    ``allowed_hosts``: the Host headers it answers to; None (bound to every
    address, reached by names it cannot know) takes any, and then the token
    alone keeps other sites out.
    """
    app = Flask("cened.review", template_folder=str(Path(__file__).with_name("templates")))
    app.config.update(MAX_CONTENT_LENGTH=64 * 1024)  # forms of a few fields: nothing big is posted
    places = Places.of(settings)
    thumbs = settings.database.parent / "thumbnails"

    @app.before_request
    def _guard() -> None:
        # The token first: without it, nothing here exists (a 404, not a 403 that says it does).
        first = request.path.lstrip("/").split("/", 1)[0]
        if not hmac.compare_digest(first.encode(), token.encode()):
            abort(404)
        if allowed_hosts is not None and request.host not in allowed_hosts:
            abort(400, "this server answers only to the address it printed")
        if request.method not in ("GET", "HEAD"):
            _check_same_origin(token, allowed_hosts)

    @app.after_request
    def _headers(response: Response) -> Response:
        # No script, frame or foreign resource on these pages; nothing cached but thumbnails.
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        # The token is in the URL: never sent elsewhere.  Not no-referrer, with which a browser
        # sends "Origin: null" on our own forms, the value a sandboxed foreign page sends too.
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.get("/<token>/")
    def page(token: str) -> str:
        album = request.args.get("album") or None
        with _journal(settings) as journal:
            rows = [r for r in current_rows(journal) if r.group_id is None]
            known = sorted(undoing.known_albums(journal, settings))
            filed = journal.history(actions=FILING_ACTIONS)
        waiting = [r for r in rows if r.album in _looked_at(settings)]
        recent = [r for r in rows if r.album not in _looked_at(settings) and r.action != Action.QUARANTINED]
        albums = sorted({r.album for r in recent if r.album})
        if album:
            recent = [r for r in recent if r.album == album]
        return render_template(
            "review.html",
            token=token,
            settings=settings,
            waiting=[_card(r, settings) for r in reversed(waiting)],
            recent=[_card(r, settings) for r in reversed(recent[-RECENT:])],
            albums=albums,
            album=album,
            known=known,
            done=request.args.get("done"),
            problem=request.args.get("problem"),
            per_day=_per_day(filed, settings),
            spread=_spread(filed),
            threshold=settings.confidence_threshold,
        )

    @app.post("/<token>/file")
    def file(token: str) -> Any:
        row_id = _int(request.form.get("id"))
        new = request.form.get("go") == "new"
        album = (request.form.get("new_album") if new else request.form.get("album")) or ""
        try:
            with _journal(settings) as journal:
                row = journal.get(row_id)
                if request.form.get("label"):  # one of the model's guesses: a class, as it named it
                    label = request.form["label"]
                elif row is not None and not new:  # an album: its one class, as a move by hand records it
                    label = places.label_for(album.strip(), row)
                else:
                    label = album.strip()
                # Exactly `cened correct ID LABEL`: a corrected row with the human label, for learn.
                plans = undoing.plan_correct(journal, settings, row_id, label, new_album=new)
                entries = undoing.carry_out(journal, plans, Action.CORRECTED, label=label, settings=settings)
        except CenedError as exc:
            return _back(token, problem=" ".join(exc.lines()))
        lead = entries[0]
        if lead.state != "done":
            return _back(token, problem=f"not moved: {lead.reason}")
        log.info("review-filed", id=lead.id, ref_id=row_id, album=lead.album, human_label=label)
        return _back(token, done=f"#{row_id} {lead.source.name} filed into {lead.album} (#{lead.id})")

    @app.post("/<token>/undo")
    def undo(token: str) -> Any:
        row_id = _int(request.form.get("id"))
        try:
            with _journal(settings) as journal:
                plans = undoing.plan_undo(journal, [row_id])
                entries = undoing.carry_out(journal, plans, Action.UNDONE, settings=settings)
        except CenedError as exc:
            return _back(token, problem=" ".join(exc.lines()))
        lead = entries[0]
        if lead.state != "done":
            return _back(token, problem=f"not moved: {lead.reason}")
        log.info("review-undone", id=lead.id, ref_id=row_id)
        return _back(token, done=f"#{row_id} undone: {lead.source.name} is back in the inbox (#{lead.id})")

    @app.get("/<token>/thumb/<int:row_id>")
    def thumb(token: str, row_id: int) -> Response:
        with _journal(settings) as journal:
            row = journal.get(row_id)
            row = journal.current(row) if row is not None else None
        if row is None or row.destination is None or row.sha256 is None:
            abort(404)
        path = inside(settings.library, row.destination)
        if path is None:
            abort(404)
        cached = thumbs / f"{row.sha256}-{THUMB_SIDE}.jpg"
        if not cached.is_file() and not make_thumbnail(path, cached):
            abort(404)
        response = Response(cached.read_bytes(), mimetype="image/jpeg")
        response.headers["Cache-Control"] = "private, max-age=86400"  # named by content: never stale
        return response

    return app


def _looked_at(settings: Settings) -> set[str]:
    """The albums of photos that need a person: review, and other."""
    return {settings.review_album, *([settings.other_album] if settings.other_album else [])}


def _check_same_origin(token: str, allowed_hosts: set[str] | None) -> None:
    """A request that changes something must come from this page (see the module's docstring)."""
    if not hmac.compare_digest(request.form.get("token", "").encode(), token.encode()):
        abort(403, "the form's token is missing or wrong")
    origin = request.headers.get("Origin")
    ours = allowed_hosts if allowed_hosts is not None else {request.host}
    if origin is not None and (origin == "null" or urlsplit(origin).netloc not in ours):
        abort(403, "a request from another site")
    if request.headers.get("Sec-Fetch-Site") not in (None, "same-origin", "none"):
        abort(403, "a request from another site")


def _back(token: str, **message: str) -> Any:
    """Back to the page (303: the browser GETs it), with what happened."""
    album = request.form.get("back_album") or None
    return redirect(url_for("page", token=token, album=album, **message), code=303)


def _int(value: str | None) -> int:
    try:
        return int(value or "")
    except ValueError:
        abort(400, "a row id is a number")


@contextmanager
def _journal(settings: Settings) -> Iterator[Journal]:
    """A connection of this request's own: waitress answers each request on a thread of its pool."""
    journal = Journal(settings.database)
    try:
        yield journal
    finally:
        journal.close()


def _card(row: Entry, settings: Settings) -> Card:
    probs = sorted((row.probabilities or {}).items(), key=lambda kv: -kv[1])[:3]
    return Card(row, [(label, settings.album_for(label), p) for label, p in probs])


def _per_day(rows: list[Entry], settings: Settings) -> dict[str, Any]:
    """Photos filed per day and album over the last ``CHART_DAYS`` days, for a stacked bar chart."""
    today = datetime.now(UTC).date()
    days = [(today - timedelta(days=n)).isoformat() for n in range(CHART_DAYS - 1, -1, -1)]
    counts: Counter[tuple[str, str]] = Counter()
    for r in rows:
        if r.state == "done" and r.group_id is None and r.time[:10] in days:
            counts[(r.time[:10], r.album or str(r.action))] += 1
    albums = sorted({album for _, album in counts})
    top = max((sum(counts[(d, a)] for a in albums) for d in days), default=0)
    return {"days": days, "albums": albums, "counts": counts, "top": max(top, 1)}


def _spread(rows: list[Entry]) -> dict[str, Any]:
    """How confident the model was about the photos it filed: a histogram over 0..1."""
    bins = [0] * CONFIDENCE_BINS
    for r in rows:
        if r.state == "done" and r.group_id is None and r.confidence is not None:
            bins[min(int(r.confidence * CONFIDENCE_BINS), CONFIDENCE_BINS - 1)] += 1
    return {"bins": bins, "top": max(max(bins), 1)}


def inside(root: Path, path: Path) -> Path | None:
    """``path`` with its links resolved, if that is a file inside ``root``; else None.

    The one gate between the journal's paths and what the server sends:
    a row may name a link that leads out of the library, or a path with
    ``..`` in it.
    """
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return real if real.is_file() and real.is_relative_to(root.resolve()) else None


def make_thumbnail(photo: Path, target: Path) -> bool:
    """A JPEG of ``photo`` at most ``THUMB_SIDE`` pixels, upright, written atomically to ``target``."""
    from PIL import Image, ImageOps

    from cened.ml import imaging  # noqa: F401 - registers HEIF and AVIF with Pillow

    try:
        with Image.open(photo) as im:
            im.draft("RGB", (THUMB_SIDE, THUMB_SIDE))  # a JPEG decodes at a fraction of its size
            small = ImageOps.exif_transpose(im).convert("RGB")
    except Exception:  # noqa: BLE001 - not a picture Pillow reads (a RAW, a video): its preview, or none
        small = _raw_preview(photo)
        if small is None:
            return False
    small.thumbnail((THUMB_SIDE, THUMB_SIDE))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    small.save(tmp, "JPEG", quality=82)
    tmp.replace(target)
    return True


def _raw_preview(photo: Path) -> Any:
    """The embedded preview of a camera RAW file, as a Pillow image; None if it has none."""
    import rawpy
    from PIL import Image

    try:
        with rawpy.imread(str(photo)) as raw:
            thumb = raw.extract_thumb()
    except Exception:  # noqa: BLE001 - LibRaw's errors are many; no preview is all that matters
        return None
    if thumb.format == rawpy.ThumbFormat.JPEG:
        return Image.open(io.BytesIO(thumb.data)).convert("RGB")
    return Image.fromarray(thumb.data).convert("RGB")


class ReviewServer:
    """The page on waitress, on ``host``:``port`` (0: any free port), until :meth:`close`."""

    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int = 0) -> None:
        from waitress import create_server

        self.token = secrets.token_urlsafe(24)
        app = _Lazy()
        self._server: Any = create_server(
            app, host=host, port=port, threads=4, ident="cened", clear_untrusted_proxy_headers=True
        )
        self.port = int(self._server.effective_port)
        shown = f"[{host}]" if ":" in host else host
        allowed: set[str] | None = {f"{n}:{self.port}" for n in (shown, "127.0.0.1", "localhost", "[::1]")}
        if host in ("0.0.0.0", "::", ""):  # every address: the names it is reached by are unknown here
            allowed = None
        app.app = make_app(settings, self.token, allowed)
        self.url = f"http://{shown}:{self.port}/{self.token}/"
        self._stopping = threading.Event()

    def serve(self) -> None:
        """Answer requests until :meth:`close` (from another thread) or Ctrl-C.

        waitress's own ``run`` loops until every connection is gone, which a
        browser's keep-alive may never allow; this loop looks at a flag
        between rounds instead, and closes everything on the thread that ran it.
        """
        from waitress import wasyncore

        server = self._server
        try:
            while not self._stopping.is_set():
                wasyncore.loop(timeout=0.2, map=server._map, count=1)
        finally:
            server.task_dispatcher.shutdown()
            wasyncore.close_all(server._map, ignore_all=True)

    def close(self) -> None:
        self._stopping.set()


class _Lazy:
    """A WSGI app set once the server's port is known (the allowed Host names carry it)."""

    app: Any = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self.app(environ, start_response)

"""``cened review``: the page, its guards and its clicks, over real HTTP and in a real browser.

The server is the real one (waitress on a free port of 127.0.0.1), the
journal and the library are real, and a click is checked where it counts:
the photo moved, and the journal has the ``corrected`` row ``cened learn``
learns from.  The browser test drives Debian's chromium with playwright and
skips, saying why, where either is missing.
"""

from __future__ import annotations

import http.client
import os
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLASSES, write_photo

from cened import learn
from cened.config import Settings
from cened.journal import Action, Entry, Journal, State
from cened.review import ReviewServer

ROOT = Path(__file__).resolve().parents[1]


class Site:
    """A review server over a library with photos in review and in albums."""

    def __init__(self, settings: Settings, server: ReviewServer, ids: dict[str, int]) -> None:
        self.settings, self.server, self.ids = settings, server, ids

    @property
    def url(self) -> str:
        return self.server.url

    def get(self, path: str = "", headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """A GET of exactly ``path`` after the token's folder, sent as is (no normalising)."""
        return self.raw("GET", f"/{self.server.token}/{path}", headers=headers)

    def raw(
        self, method: str, target: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        try:
            conn.putrequest(method, target, skip_host=bool(headers and "Host" in headers))
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Type", "application/x-www-form-urlencoded")
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def post(self, action: str, headers: dict[str, str] | None = None, **form: str) -> tuple[int, bytes]:
        body = urllib.parse.urlencode(form).encode()
        return self.raw("POST", f"/{self.server.token}/{action}", body, headers)

    def rows(self) -> list[Entry]:
        with Journal(self.settings.database, readonly=True) as journal:
            return journal.history()


@pytest.fixture
def site(settings: Settings, filing) -> Iterator[Site]:  # type: ignore[no-untyped-def]
    file, _journal = filing
    ids: dict[str, int] = {}
    for i, cls in enumerate(CLASSES):
        for n in range(2):
            photo = write_photo(settings.inbox / f"{cls}-{n}.jpg", cls, size=(96, 72), seed=10 * i + n)
            ids[photo.name] = file(photo)[0].entry.id
    # Two the model was not sure enough about: into review (nothing is sure of 1.0).
    for name, cls in (("unsure-1.jpg", "glacier"), ("unsure-2.jpg", "forest")):
        photo = write_photo(settings.inbox / name, cls, size=(96, 72), seed=99)
        (out,) = file(photo, confidence_threshold=1.0)
        assert out.entry.action == Action.REVIEW
        ids[name] = out.entry.id
    server = ReviewServer(settings)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    yield Site(settings, server, ids)
    server.close()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_the_page_lists_review_first_with_thumbnails_and_guesses(site: Site) -> None:
    status, body = site.get()
    assert status == 200
    page = body.decode()
    waiting = page[page.index('id="waiting"') : page.index('id="recent"')]
    assert "unsure-1.jpg" in waiting and "unsure-2.jpg" in waiting and "sea-0.jpg" not in waiting
    assert "Needs a look: 2 in review" in page and "sea-0.jpg" in page[page.index('id="recent"') :]
    assert 'value="glacier"' in waiting  # a guess is a button that files the photo there
    assert "<svg" in page and "confidence_threshold 0.6" in page  # the two charts
    status, thumb = site.get(f"thumb/{site.ids['unsure-1.jpg']}")
    assert status == 200 and thumb[:3] == b"\xff\xd8\xff"  # a JPEG
    assert len(list((site.settings.database.parent / "thumbnails").iterdir())) == 1  # cached
    status, body = site.get("?album=sea")
    recent = body.decode()[body.decode().index('id="recent"') :]
    assert "sea-0.jpg" in recent and "forest-0.jpg" not in recent


def test_a_wrong_token_or_host_finds_nothing(site: Site) -> None:
    assert site.raw("GET", "/")[0] == 404
    assert site.raw("GET", "/not-the-token/")[0] == 404
    assert site.raw("GET", f"/{site.server.token[:-1]}/")[0] == 404
    rebinding = {"Host": f"attacker.example:{site.server.port}"}
    assert site.get("", headers=rebinding)[0] == 400


@pytest.mark.parametrize(
    "target",
    [
        "thumb/..%2f..%2f..%2fetc%2fpasswd",
        "thumb/../../../../etc/passwd",
        "../../../../etc/passwd",
        "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "thumb/1/../../../../../etc/passwd",
        "thumb/%2fetc%2fpasswd",
        "static/../../../../etc/passwd",
    ],
)
def test_no_path_leads_out_of_the_library(site: Site, target: str) -> None:
    status, body = site.get(target)
    assert status in (400, 404) and b"root:" not in body


def test_a_row_that_leads_out_of_the_library_is_not_served(site: Site, tmp_path: Path) -> None:
    secret = write_photo(tmp_path / "private" / "secret.jpg", "sea", seed=5)
    link = site.settings.library / "sea" / "link.jpg"
    link.symlink_to(secret)
    outside = site.settings.library / ".." / "private" / "secret.jpg"
    with Journal(site.settings.database) as journal:
        rows = [
            Entry(action=Action.MOVED, source=Path("/x"), destination=dst, sha256="ab" * 32, state=State.DONE)
            for dst in (link, outside, secret)
        ]
        journal.add(rows)
    for row in rows:
        assert site.get(f"thumb/{row.id}")[0] == 404


def test_bound_to_every_address_it_takes_any_host_but_still_checks_the_origin(settings: Settings) -> None:
    server = ReviewServer(settings, host="0.0.0.0")
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        site = Site(settings, server, {})
        assert site.get("", headers={"Host": f"photos.lan:{server.port}"})[0] == 200
        assert site.get("", headers={"Host": f"photos.lan:{server.port}"})[0] == 200
        host = {"Host": f"photos.lan:{server.port}", "Origin": "http://evil.example"}
        assert site.post("undo", host, id="1", token=server.token)[0] == 403
        assert site.raw("GET", "/", headers={"Host": "photos.lan"})[0] == 404  # the token, still
    finally:
        server.close()
        thread.join(timeout=10)


def test_a_request_from_another_site_changes_nothing(site: Site) -> None:
    before = site.rows()
    row = str(site.ids["unsure-1.jpg"])
    token = site.server.token
    assert site.post("file", id=row, label="glacier")[0] == 403  # no token in the form
    assert site.post("file", id=row, label="glacier", token="guess")[0] == 403
    assert (
        site.post("file", {"Origin": "https://evil.example"}, id=row, label="glacier", token=token)[0] == 403
    )
    assert site.post("file", {"Origin": "null"}, id=row, label="glacier", token=token)[0] == 403
    assert site.post("file", {"Sec-Fetch-Site": "cross-site"}, id=row, label="glacier", token=token)[0] == 403
    assert site.post("undo", {"Sec-Fetch-Site": "same-site"}, id=row, token=token)[0] == 403
    assert site.get(f"file?id={row}&label=glacier&token={token}")[0] == 405  # a link cannot file
    assert site.rows() == before
    assert (site.settings.library / "review" / "unsure-1.jpg").is_file()


def test_filing_from_the_page_is_a_correction_learn_learns_from(site: Site) -> None:
    row = site.ids["unsure-1.jpg"]
    origin = f"http://127.0.0.1:{site.server.port}"
    status, _ = site.post("file", {"Origin": origin}, id=str(row), label="glacier", token=site.server.token)
    assert status == 303
    assert (site.settings.library / "glacier" / "unsure-1.jpg").is_file()
    last = site.rows()[-1]
    assert (last.action, last.ref_id, last.human_label, last.album) == (
        "corrected",
        row,
        "glacier",
        "glacier",
    )
    with Journal(site.settings.database, readonly=True) as journal:
        examples, _ = learn.corrected_examples(journal, site.settings, learn.Albums(Path()), CLASSES)
    assert [(e.label, e.path.name) for e in examples] == [("glacier", "unsure-1.jpg")]

    # An album picked from the list, a new album, and undo: each as its command does it.
    token = site.server.token
    assert site.post("file", id=str(site.ids["unsure-2.jpg"]), album="forest", go="1", token=token)[0] == 303
    assert (site.settings.library / "forest" / "unsure-2.jpg").is_file()
    assert (
        site.post("file", id=str(site.ids["sea-0.jpg"]), new_album="beach", go="new", token=token)[0] == 303
    )
    assert (
        site.rows()[-1].human_label == "beach" and (site.settings.library / "beach" / "sea-0.jpg").is_file()
    )
    assert site.post("undo", id=str(site.rows()[-1].id), token=token)[0] == 303
    assert site.rows()[-1].action == "undone" and (site.settings.inbox / "sea-0.jpg").is_file()


def test_a_refused_click_says_why_and_moves_nothing(site: Site) -> None:
    token = site.server.token
    status, _ = site.post("file", id=str(site.ids["sea-1.jpg"]), new_album="a/b", go="new", token=token)
    assert status == 303
    before = site.rows()
    location = site.raw("POST", f"/{token}/file", b"id=999&label=sea&token=" + token.encode())
    assert location[0] == 303 and site.rows() == before
    status, body = site.get("?problem=refused%3A+%23999+does+not+exist")
    assert status == 200 and "#999 does not exist" in body.decode()


@pytest.mark.slow
def test_the_page_beside_a_running_daemon(settings: Settings, tmp_path: Path) -> None:
    """A click while the daemon watches the library: the follower finds the move already journaled."""
    from daemon_helpers import RunningDaemon, wait_until

    unsure = settings.model_copy(update={"confidence_threshold": 1.0})
    with RunningDaemon(unsure) as daemon:
        write_photo(tmp_path / "drop" / "a.jpg", "sea", seed=3).rename(settings.inbox / "a.jpg")
        assert wait_until(lambda: daemon.filed >= 1, timeout=60)
        assert daemon.library_watched.wait(timeout=30)
        server = ReviewServer(settings)
        thread = threading.Thread(target=server.serve, daemon=True)
        thread.start()
        try:
            site = Site(settings, server, {})
            (filed,) = site.rows()
            assert filed.action == "review"
            assert site.post("file", id=str(filed.id), label="sea", token=server.token)[0] == 303
            time.sleep(3)  # longer than the follower waits for a burst of changes to settle
        finally:
            server.close()
            thread.join(timeout=10)
        rows = site.rows()
    assert [(r.action, r.album) for r in rows] == [("review", "review"), ("corrected", "sea")]
    assert (settings.library / "sea" / "a.jpg").is_file()


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)")
    return found


@pytest.mark.slow
def test_in_a_real_browser_a_click_files_the_photo(site: Site, tmp_path: Path) -> None:
    """What a person does: open the page, see the thumbnails, click the right guess."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the [test] extra")
    chromium = _chromium()
    row = site.ids["unsure-1.jpg"]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(site.url)
            page.wait_for_load_state("networkidle")
            images = page.locator("img")
            assert images.count() == 14
            widths = images.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : -1)")
            assert all(w > 0 for w in widths), widths  # every thumbnail loaded and decoded
            shot = ROOT / "docs" / "review.png" if os.environ.get("CENED_SCREENSHOT") else tmp_path / "p.png"
            page.screenshot(path=str(shot), full_page=False)
            assert shot.stat().st_size > 10_000

            card = page.locator(f"#row-{row}")
            card.get_by_role("button", name="→ glacier").click()
            page.wait_for_load_state("networkidle")
            assert "filed into glacier" in page.get_by_role("status").inner_text()
            assert (
                page.locator(f"#row-{row}").count() == 0 or "glacier" in page.locator("#recent").inner_text()
            )
        finally:
            browser.close()
    last = site.rows()[-1]
    assert (last.action, last.ref_id, last.human_label) == ("corrected", row, "glacier")
    assert (site.settings.library / "glacier" / "unsure-1.jpg").is_file()

"""The dashboard in a real browser: `streamlit run` as a server, Debian's headless Chromium as client.

Streamlit renders on the client from messages on a websocket, so the test reads the live page
over the DevTools protocol until the content is there, then checks the DOM and takes a screenshot.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from controller.results import selection
from controller.results.database import open_db
from tests.dashboard.conftest import History
from tests.net import free_port

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "dashboard" / "app.py"
CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed: apt-get install -y chromium"
)



@contextmanager
def serving(db_url: str, tmp_path: Path) -> Iterator[str]:
    """A `streamlit run` of the app on a free port; yields its URL, stops its process group."""
    port = free_port()
    log = (tmp_path / "streamlit.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env={**os.environ, "EDGEFARM_DB": db_url}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so the stop below reaches only what it started
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "streamlit.log").read_text()
            try:
                if urllib.request.urlopen(url + "_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "streamlit did not answer its health check in 60 s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture
def server(ppocr_db: str, tmp_path: Path) -> Iterator[str]:
    with serving(ppocr_db, tmp_path) as url:
        yield url


def table_rows(html: str) -> list[list[str]]:
    """The text of each cell, row by row, of an HTML table."""
    from html.parser import HTMLParser

    rows: list[list[str]] = []

    class Cells(HTMLParser):
        cell: list[str] | None = None

        def handle_starttag(self, tag: str, attrs: object) -> None:
            if tag == "tr":
                rows.append([])
            elif tag in ("td", "th"):
                self.cell = []

        def handle_endtag(self, tag: str) -> None:
            if tag in ("td", "th") and self.cell is not None:
                rows[-1].append("".join(self.cell).strip())
                self.cell = None

        def handle_data(self, data: str) -> None:
            if self.cell is not None:
                self.cell.append(data)

    Cells().feed(html)
    return rows


class Chromium:
    """Headless Chromium driven over the DevTools protocol (``websockets`` ships with Streamlit).

    Streamlit fills the page over a websocket after the load event, which --virtual-time-budget
    does not wait for: on a busy machine --dump-dom returns a half-built page. Polling the live
    page until the content is there waits exactly as long as needed.
    """

    def __init__(self, profile: Path, width: int = 1400, height: int = 2000) -> None:
        self.profile, self.size = profile, (width, height)
        self.ids = 0

    def __enter__(self) -> Chromium:
        import json
        from contextlib import ExitStack

        from websockets.sync.client import connect

        self.stack = ExitStack()
        log = self.stack.enter_context((self.profile.parent / "chromium.log").open("wb"))
        self.proc = subprocess.Popen(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={self.profile}", f"--window-size={self.size[0]},{self.size[1]}",
             "--remote-debugging-port=0", "about:blank"],
            stdout=log, stderr=log, start_new_session=True,  # a file, not a pipe nobody drains
        )
        self.stack.callback(self._stop)
        try:
            # Chromium writes the port it chose into DevToolsActivePort in its profile.
            port_file = self.profile / "DevToolsActivePort"
            deadline = time.monotonic() + 30
            while not (port_file.is_file() and port_file.read_text().strip()):
                assert self.proc.poll() is None and time.monotonic() < deadline, "chromium did not start DevTools"
                time.sleep(0.2)
            port = port_file.read_text().split()[0]
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
            page = next(t for t in targets if t["type"] == "page")
            self.ws = self.stack.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10))
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def _stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def call(self, method: str, **params: object) -> dict:
        import json

        self.ids += 1
        self.ws.send(json.dumps({"id": self.ids, "method": method, "params": params}))
        while True:  # events arrive in between; keep the answer to this call
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.ids:
                assert "error" not in message, message["error"]
                return message["result"]

    def html(self) -> str:
        answer = self.call("Runtime.evaluate", expression="document.documentElement.outerHTML", returnByValue=True)
        return answer["result"].get("value") or ""  # nothing while a navigation swaps documents

    def open(self, url: str, ready: Callable[[str], bool], timeout: float = 120) -> str:
        """Navigate and poll until ``ready(html)``; returns the page's HTML at that point."""
        # The viewport itself, not the window (whose frame takes part of --window-size).
        self.call("Emulation.setDeviceMetricsOverride", width=self.size[0], height=self.size[1],
                  deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", url=url)
        return self.wait(ready, timeout)

    def wait(self, ready: Callable[[str], bool], timeout: float = 120) -> str:
        """Poll the page until ``ready(html)``; returns its HTML at that point."""
        deadline = time.monotonic() + timeout
        html = ""
        while time.monotonic() < deadline:
            html = self.html()
            if ready(html):
                return html
            time.sleep(0.5)
        return html  # the caller's assertions say what is missing

    def click(self, selector: str, text: str) -> None:
        """A left click, as a mouse makes it, on the middle of the element matching ``selector``
        whose text is ``text``: Streamlit's tabs answer pointer events, not a script's click()."""
        import json

        where = self.call("Runtime.evaluate", returnByValue=True, expression=f"""(() => {{
            const found = [...document.querySelectorAll({json.dumps(selector)})]
                .find(e => e.innerText.trim() === {json.dumps(text)});
            if (!found) return null;
            const box = found.getBoundingClientRect();
            return [box.x + box.width / 2, box.y + box.height / 2];
        }})()""")["result"].get("value")
        assert where, f"no {selector} reading {text!r} on the page"
        for event in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=event, x=where[0], y=where[1], button="left", clickCount=1)

    def screenshot(self, path: Path) -> None:
        import base64

        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))


def test_page_shows_the_selection_table(server: str, ppocr_db: str, tmp_path: Path) -> None:
    with open_db(ppocr_db)() as session:
        sels = selection.selections(session, 0.01)
    assert sels
    # What the selection table must show: every (model, chip) and, for each pick, its engine,
    # configuration and p50 printed as the table prints it (4 significant digits).
    wanted = {"Engine selection", "Runs", "Boards"}
    for s in sels:
        wanted |= {s.model, s.chip}
        if s.best:
            wanted |= {s.best.engine, s.best.variant, f"{s.best.p50_ms:.4g}"}

    def ready(html: str) -> bool:
        # The Boards table is the script's last element: once it is there the run has finished.
        return 'id="boards"' in html and html.count('data-testid="stDataFrame"') >= 3 and all(w in html for w in wanted)

    shot = tmp_path / "dashboard.png"
    with Chromium(tmp_path / "profile") as browser:
        dom = browser.open(server, ready)
        time.sleep(2)  # let Vega draw the charts before the picture is taken
        browser.screenshot(shot)

    missing = sorted(w for w in wanted if w not in dom)
    assert not missing, f"the rendered page lacks {missing}"
    assert 'data-testid="stException"' not in dom
    assert "No results yet" not in dom
    # The selection table is a real HTML table: its rows are selection's picks, in order.
    start = dom.index('data-testid="stTable"')
    rows = table_rows(dom[start:dom.index("</table>", start)])
    header, body = rows[0], rows[1:]
    assert len(body) == len(sels)
    for cells, s in zip(body, sels):
        row = dict(zip(header, cells))
        assert (row["model"], row["chip"]) == (s.model, s.chip)
        if s.best:
            assert (row["engine"], row["variant"], row["p50 ms"]) == (s.best.engine, s.best.variant, f"{s.best.p50_ms:.4g}")
            assert row["result"] == "best within budget"
        else:
            assert row["result"] == "nothing within budget"

    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1400, 2000)
    if os.environ.get("EDGEFARM_SCREENSHOT"):  # keep it for a human to look at
        shutil.copy(shot, os.environ["EDGEFARM_SCREENSHOT"])


@pytest.mark.slow
def test_history_tab_draws_the_band_and_marks_the_change(history_db: History, tmp_path: Path) -> None:
    """The History tab opens on the benchmark nightly found regressed ("mlp", whose model file was
    replaced by a slower one): its chart is drawn as SVG with the band, the verdicts and the change
    named in the legend and on the chart."""
    import re

    def history_svg(html: str) -> str:
        return next((svg for svg in re.findall(r"<svg.*?</svg>", html, re.S) if "model file changed" in svg), "")

    def history_open(html: str) -> bool:
        return re.search(r'aria-selected="true"[^>]*><div[^>]*><p>History</p>', html) is not None

    shot = tmp_path / "history.png"
    with serving(history_db.url, tmp_path) as url, Chromium(tmp_path / "profile") as browser:
        browser.open(url, lambda html: 'id="boards"' in html)  # the script has run to its end
        browser.click('[role="tab"]', "History")
        dom = browser.wait(lambda html: history_open(html) and bool(history_svg(html)))
        time.sleep(1)  # let Vega finish drawing before the picture is taken
        browser.screenshot(shot)

    assert history_open(dom), "the History tab did not open"
    svg = history_svg(dom)
    assert svg, "the History tab drew no chart naming the change"
    assert 'data-testid="stException"' not in dom
    labels = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    assert {"noise band", "regression", "not judged", "model file changed", "p50 latency (ms)"} <= set(labels), labels
    marks = set(re.findall(r'class="mark-([a-z]+) role-mark', svg))
    assert {"area", "line", "symbol", "rule", "text"} <= marks, marks  # band, p50, points, change: rule and label
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1400, 2000)
    if os.environ.get("EDGEFARM_SCREENSHOT"):
        shutil.copy(shot, Path(os.environ["EDGEFARM_SCREENSHOT"]).with_name("history.png"))

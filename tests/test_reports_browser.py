"""Reports as a reader sees them (issue 13, items 4 and 5): every page the committed evidence produces,
re-rendered from its data as scripts/render_evidence.py does (plotly.js linked from one shared copy), and a
self-contained page, opened in headless Chromium with the network off. Each must draw with no console
error and no request leaving the machine; every chart must carry a title and a title on each axis in its
rendered SVG, clear of plotly's toolbar, its legend and the chart's edges; tables stay inside their cards.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe): no port, no extra
package. Without Chromium these tests skip (CI: apt-get install -y chromium).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import pkgutil
import re
import select
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

import reports
from reports.html import Answer, FigureError, Section, layout, linked_plotly, no_axes, render_page, table_html

ROOT = Path(__file__).resolve().parent.parent
# committed GPU evidence (evidence/), and CPU fixtures of the report kinds
# that have none yet (tests/fixtures/reports/README.md)
EVIDENCE_ROOTS = [p for p in (ROOT / "evidence", ROOT / "tests" / "fixtures" / "reports") if p.is_dir()]
CHROMIUM = next((p for p in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--remote-debugging-pipe",
         "--host-resolver-rules=MAP * ~NOTFOUND"]  # a request for any host fails, and is seen
VIEWPORT = (1400, 900)  # issue 24: a designer's screen; the answer chart must sit in its first 900 px
FIRST_SCREEN_PX = 900
# a few representative pages, saved (first screen) when REPORT_SCREENSHOTS names a folder, e.g.
# REPORT_SCREENSHOTS=docs/screenshots python -m pytest tests/test_reports_browser.py -k evidence_page
SCREENSHOTS = {"evidence/h100/layer/figure2": "layer.png", "evidence/h100/carryover/core": "carryover.png",
               "evidence/h100/advise/gpt3-2.7b-eager": "advisor.png", "evidence/h100/invariance/matmul": "invariance.png",
               "evidence/h100/sweeps": "sweep.png", "evidence/h100/inference": "inference.png",
               "tests/fixtures/reports/diff-gpt3-2.7b-a20": "diff.png",
               "tests/fixtures/reports/distributed-t2": "distributed.png"}
OFF_MACHINE = ("http:", "https:", "ws:", "wss:", "ftp:")


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_evidence = _load_script("render_evidence")


# ---- render_page: an unreadable chart is refused before any browser sees it -----------------------------
def _render(figure: dict) -> str:
    return render_page("t", [Section("s", figures=[figure])])


def test_render_page_refuses_a_chart_without_an_axis_title():
    fig = {"data": [{"type": "bar", "x": ["a"], "y": [1]}], "layout": layout("latency by config", None, "latency (ms)")}
    with pytest.raises(FigureError, match="'latency by config': no xaxis title"):
        _render(fig)


def test_render_page_refuses_a_plain_string_title_that_plotly_would_drop():
    fig = {"data": [{"type": "scatter", "x": [1], "y": [1]}],
           "layout": {"title": "latency", "xaxis": {"title": "n"}, "yaxis": {"title": {"text": "ms"}}}}
    with pytest.raises(FigureError) as info:
        _render(fig)
    assert "the title is a plain string" in str(info.value) and "xaxis's title is a plain string" in str(info.value)


def test_render_page_checks_the_axes_a_trace_draws_on():
    fig = {"data": [{"type": "scatter", "x": [1], "y": [1]}, {"type": "scatter", "x": [1], "y": [2], "yaxis": "y2"}],
           "layout": layout("two axes", "n", "TFLOP/s", yaxis2={"overlaying": "y", "side": "right"})}
    with pytest.raises(FigureError, match="no yaxis2 title"):
        _render(fig)


def test_a_chart_without_axes_is_exempt_only_when_marked():
    pie = {"data": [{"type": "pie", "labels": ["gemm", "other"], "values": [3, 1]}], "layout": layout("share")}
    with pytest.raises(FigureError, match=r"draws no x/y axes \(pie\): say so with no_axes"):
        _render(pie)
    assert 'data-no-axes="a pie"' in _render(no_axes(pie, "a pie"))
    bars = {"data": [{"type": "bar", "x": ["a"], "y": [1]}], "layout": layout("bars")}
    with pytest.raises(FigureError, match="marked no_axes .* but draws bar traces"):
        _render(no_axes(bars, "not really"))


def test_tables_print_whole_numbers_as_whole_numbers():
    df = pd.DataFrame({"h": [4096, 8192], "flops": [2.0e12, 4.0e12], "ms": [1.5, 2.25], "gap": [3.0, None]})
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", table_html(df))
    assert cells == ["4,096", "2,000,000,000,000", "1.50", "3", "8,192", "4,000,000,000,000", "2.25", ""]


def test_self_contained_by_default_linked_on_request():
    fig = {"data": [{"type": "bar", "x": ["a"], "y": [1]}], "layout": layout("t", "config", "TFLOP/s")}
    inline = _render(fig)
    assert len(inline) > 1_000_000 and "<script src=" not in inline
    linked = render_page("t", [Section("s", figures=[fig])], plotly_src="../assets/plotly-basic.min.js")
    assert len(linked) < 20_000 and '<script src="../assets/plotly-basic.min.js"></script>' in linked
    with linked_plotly("../../assets/plotly-basic.min.js"):  # for writers that do not pass plotly_src
        assert '<script src="../../assets/plotly-basic.min.js"></script>' in _render(fig)
    assert len(_render(fig)) > 1_000_000


def test_how_to_read_comes_first():
    page = render_page("t", [Section("first section")], how_to_read=["one", "two"])
    assert page.index("How to read this report") < page.index("first section")
    assert "<li>one</li><li>two</li>" in page
    assert "How to read" not in render_page("t", [Section("s")])


# ---- scripts/render_evidence.py ------------------------------------------------------------------------
def one_page_per_kind() -> list[tuple[Path, Path, str]]:
    """The folder of each kind with the least data (a CPU fixture where there is one): every report module
    once, in seconds."""
    def data_bytes(entry) -> int:
        return sum(p.stat().st_size for p in entry[1].rglob("*") if p.is_file())

    kinds = {}
    for entry in EVIDENCE:
        kinds.setdefault(entry[2], []).append(entry)
    return [min(entries, key=data_bytes) for entries in kinds.values()]


def assert_every_page_links_the_shared_plotly(copy: Path) -> list[Path]:
    pages = sorted(p for p in copy.rglob("*.html"))
    assert len(pages) == len(render_evidence.find_pages(copy))  # a carry-over folder holds pages of its own
    for page in pages:
        depth = len(page.relative_to(copy).parts) - 1
        text = page.read_text()
        assert f'<script src="{"../" * depth}assets/plotly-basic.min.js"></script>' in text
        assert len(text) < 2_500_000 and "Copyright 2012" not in text  # the bundle is not inlined
    assert (copy / "assets" / "plotly-basic.min.js").read_bytes() == (ROOT / "reports" / "assets" / "plotly-basic.min.js").read_bytes()
    return pages


def test_render_evidence_links_a_page_of_every_kind_to_one_shared_plotly(tmp_path):
    copy = tmp_path / "evidence"  # the committed data only: no traces, no pages
    for _, folder, kind in one_page_per_kind():
        _copy_data(folder, copy / folder.relative_to(ROOT), kind)
    assert render_evidence.main([str(copy)]) == 0, "see the errors printed above"
    assert_every_page_links_the_shared_plotly(copy)
    assert {kind for _, kind in render_evidence.find_pages(copy)} == set(MODULE_OF_KIND)


@pytest.mark.slow  # half a minute: every page of the evidence (the browser test below opens the same pages)
def test_render_evidence_links_every_page_to_one_shared_plotly(evidence_copy):
    copy, code = evidence_copy
    assert code == 0, "see the errors printed above"
    assert len(assert_every_page_links_the_shared_plotly(copy)) == len(EVIDENCE)


def test_render_evidence_fails_on_a_page_it_cannot_rebuild(tmp_path, capsys):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.html").write_text("<html></html>")
    assert render_evidence.main([str(tmp_path)]) == 1
    assert "old/report.html was not re-rendered (no report data beside it)" in capsys.readouterr().err


# ---- a browser -----------------------------------------------------------------------------------------
# Measured in the page once its charts are drawn: every chart's title and axis titles as plotly wrote them
# into the SVG (class gtitle, xtitle, ytitle, y2title, ...), their boxes, the toolbar's and the legend's;
# how far each table's box and the page run past their container.
PROBE = """(async () => {
  const figs = Array.from(document.querySelectorAll(".fig"));
  for (let i = 0; i < 100 && typeof Plotly !== "undefined" && figs.some(f => !f.querySelector(".main-svg")); i++)
    await new Promise(r => setTimeout(r, 50));
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const box = el => { if (!el) return null; const r = el.getBoundingClientRect();
                      return r.width || r.height ? [r.left, r.top, r.right, r.bottom] : null; };
  const text = el => el ? el.textContent.trim() : "";
  return {
    figures: figs.map(div => {
      const sub = (div._fullLayout && div._fullLayout._subplots) || {};
      const axes = [...(sub.xaxis || []), ...(sub.yaxis || [])].map(id => {
        const t = div.querySelector("." + id + "title");
        return {axis: id, text: text(t), box: box(t)};
      });
      const title = div.querySelector(".gtitle");
      return {id: div.id, drawn: !!div.querySelector(".main-svg"), no_axes: div.dataset.noAxes || null,
              box: box(div), title: text(title), title_box: box(title), axes: axes,
              modebar: box(div.querySelector(".modebar")), legend: box(div.querySelector(".legend .bg"))};
    }),
    tables: Array.from(document.querySelectorAll("table")).map((t, i) => {
      const card = t.closest("section") || document.body;
      let right = t.getBoundingClientRect().right;  // what shows: clipped by a scrolling wrapper, if any
      for (let el = t.parentElement; el && el !== card; el = el.parentElement)
        if (getComputedStyle(el).overflowX !== "visible") right = Math.min(right, el.getBoundingClientRect().right);
      return {index: i, card: text(card.querySelector("h2")), overflow: right - card.getBoundingClientRect().right};
    }),
    page_overflow: document.documentElement.scrollWidth - window.innerWidth,
    page_height: document.documentElement.scrollHeight,
    answer: (() => { const a = document.getElementById("answer-chart");
                     return a ? {top: a.getBoundingClientRect().top + window.scrollY, drawn: !!a.querySelector(".main-svg")}
                              : null; })(),
  };
})()"""


@dataclass
class Visit:
    url: str
    errors: list[str] = field(default_factory=list)  # console errors and warnings, exceptions, failed loads
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    probe: dict = field(default_factory=dict)

    @property
    def off_machine(self) -> list[str]:
        return [u for u in self.requests if u.startswith(OFF_MACHINE)]


class Chromium:
    """Headless Chromium over the DevTools protocol: JSON messages, NUL-terminated, on fds 3 (in) and 4 (out)."""

    def __init__(self, executable: str, profile: Path):
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()

        def wire():  # runs in the child before exec: the protocol pipes become fds 3 and 4
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)

        self.proc = subprocess.Popen([executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=wire, pass_fds=(3, 4))
        os.close(to_child)
        os.close(from_child)
        self._buffer, self._id, self._events = b"", 0, []

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (code {self.proc.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}, **({"sessionId": session} if session else {})}
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self._events.append(reply)

    def visit(self, page: Path, timeout: float = 30, screenshot: Path | None = None) -> Visit:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            for domain in ("Runtime", "Log", "Network", "Page"):
                self.send(f"{domain}.enable", session=session)
            self.send("Emulation.setDeviceMetricsOverride", {"width": VIEWPORT[0], "height": VIEWPORT[1],
                                                             "deviceScaleFactor": 1, "mobile": False}, session=session)
            self._events.clear()
            self.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
            deadline = time.monotonic() + timeout
            while not any(e.get("method") == "Page.loadEventFired" and e.get("sessionId") == session
                          for e in self._events):
                self._events.append(self._read(deadline))
            probe = self.send("Runtime.evaluate", {"expression": PROBE, "awaitPromise": True, "returnByValue": True},
                              session=session, timeout=timeout)
            visit = Visit(page.resolve().as_uri(), probe=probe.get("result", {}).get("value") or {})
            if screenshot is not None:  # the first screen, as a reader opening the page sees it
                shot = self.send("Page.captureScreenshot", {"format": "png", "clip": {
                    "x": 0, "y": 0, "width": VIEWPORT[0], "height": FIRST_SCREEN_PX, "scale": 1}}, session=session)
                import base64
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
            if "exceptionDetails" in probe:
                visit.errors.append(f"probe failed: {probe['exceptionDetails'].get('text')}")
            for event in (e for e in self._events if e.get("sessionId") == session):
                method, params = event.get("method"), event.get("params", {})
                if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning", "assert"):
                    visit.errors.append(f"console.{params['type']}: " + " ".join(
                        str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
                elif method == "Runtime.exceptionThrown":
                    details = params["exceptionDetails"]
                    visit.errors.append(f"uncaught: {details.get('exception', {}).get('description') or details.get('text')}")
                elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                    entry = params["entry"]
                    visit.errors.append(f"{entry['source']} {entry['level']}: {entry['text']} {entry.get('url', '')}".strip())
                elif method == "Network.requestWillBeSent":
                    visit.requests.append(params["request"]["url"])
            return visit
        finally:
            self.send("Target.closeTarget", {"targetId": target})

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
            self.proc.wait(timeout=5)
        except Exception:  # already gone, or stuck: make sure it is gone
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._in)
            os.close(self._out)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium); the browser checks need it")
    chromium = Chromium(CHROMIUM, tmp_path_factory.mktemp("chromium-profile"))
    yield chromium
    chromium.close()


# ---- what a reader must be able to read ----------------------------------------------------------------
def _overlap(a, b, slack: float = 1.0) -> bool:
    return bool(a and b) and a[0] < b[2] - slack and b[0] < a[2] - slack and a[1] < b[3] - slack and b[1] < a[3] - slack


def _inside(inner, outer, slack: float = 1.0) -> bool:
    return bool(inner and outer) and inner[0] >= outer[0] - slack and inner[1] >= outer[1] - slack and \
        inner[2] <= outer[2] + slack and inner[3] <= outer[3] + slack


def figure_problems(fig: dict) -> list[str]:
    """A drawn chart's title and axis titles in its SVG: present, inside the chart, clear of the toolbar
    and the legend."""
    name = f"{fig['id']} ({fig['title'] or 'untitled'})"
    if not fig["drawn"]:
        return [f"{name}: not drawn"]
    problems = []
    if not fig["title"]:
        problems.append(f"{name}: no title in the SVG")
    elif not _inside(fig["title_box"], fig["box"]):
        problems.append(f"{name}: title cut off by the chart's edge")
    if _overlap(fig["modebar"], fig["title_box"]):
        problems.append(f"{name}: the plotly toolbar covers the title")
    if not fig["axes"] and not fig["no_axes"]:
        problems.append(f"{name}: no axes drawn, and not marked as a chart without axes")
    for ax in fig["axes"]:
        if not ax["text"]:
            problems.append(f"{name}: no {ax['axis']} axis title in the SVG")
        elif not _inside(ax["box"], fig["box"]):
            problems.append(f"{name}: {ax['axis']} axis title '{ax['text']}' cut off by the chart's edge")
        elif _overlap(fig["legend"], ax["box"]):
            problems.append(f"{name}: the legend covers the {ax['axis']} axis title '{ax['text']}'")
    if _overlap(fig["legend"], fig["title_box"]):
        problems.append(f"{name}: the legend covers the title")
    return problems


def answer_problems(visit: Visit) -> list[str]:
    """Issue 24: the page opens with its answer, a drawn chart whose top is within the first screen."""
    answer = (visit.probe or {}).get("answer")
    if not answer:
        return ["no answer chart (#answer-chart)"]
    problems = [] if answer["drawn"] else ["the answer chart did not draw (no plotly SVG)"]
    if answer["top"] > FIRST_SCREEN_PX:
        problems.append(f"the answer chart starts at {answer['top']:.0f} px, below the first {FIRST_SCREEN_PX} px")
    return problems


def page_problems(visit: Visit) -> list[str]:
    probe = visit.probe
    problems = [f"error: {e}" for e in visit.errors]
    problems += [f"request off the machine: {u}" for u in visit.off_machine]
    if not probe:
        return problems + ["the page could not be measured"]
    for fig in probe["figures"]:
        problems += figure_problems(fig)
    problems += [f"table {t['index']} in '{t['card']}' runs {t['overflow']:.0f} px past its card"
                 for t in probe["tables"] if t["overflow"] > 1]
    if probe["page_overflow"] > 1:
        problems.append(f"the page is {probe['page_overflow']} px wider than the window")
    return problems


# ---- the pages -----------------------------------------------------------------------------------------
EVIDENCE = [(root, folder, kind) for root in EVIDENCE_ROOTS for folder, kind in render_evidence.find_pages(root)]
LEFT_BEHIND = shutil.ignore_patterns("*.html", "tb", "logs", "*.trace.json*")  # pages and traces: not data
MODULE_OF_KIND = {"layer": "layer_report", "sweeps": "sweep_report", "inference": "inference_report",
                  "distributed": "distributed_report", "advisor": "advisor_report", "carryover": "carryover_report",
                  "invariance": "invariance_report", "diff": "diff_report", "decode-bench": "decode_bench_report"}


def _copy_data(folder: Path, to: Path, kind: str) -> None:
    """The data a page is rendered from: the folder's files (a carryover's whole tree), no pages, no traces."""
    if kind == "carryover":
        shutil.copytree(folder, to, ignore=LEFT_BEHIND, dirs_exist_ok=True)
        return
    to.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        if path.is_file() and not LEFT_BEHIND(str(folder), [path.name]):
            shutil.copyfile(path, to / path.name)


@pytest.fixture(scope="module")
def evidence_copy(tmp_path_factory):
    """A copy of the evidence's data (no traces, no pages) and every page rendered from it once, as
    scripts/render_evidence.py does (the shared plotly.js installed and linked); (the copy, the script's exit
    code). The rendering test and the browser test read the same pages."""
    copy = tmp_path_factory.mktemp("evidence")
    for _, folder, kind in EVIDENCE:
        _copy_data(folder, copy / folder.relative_to(ROOT), kind)
    return copy, render_evidence.main([str(copy)])


@pytest.mark.slow  # about 3 minutes on 2 cores for every page, in one Chromium session
@pytest.mark.parametrize("root, folder, kind", EVIDENCE,
                         ids=[f"{f.relative_to(ROOT).as_posix()}" for _, f, _ in EVIDENCE])
def test_evidence_page_reads_offline_with_titled_charts(browser, evidence_copy, root, folder, kind):
    page = evidence_copy[0] / folder.relative_to(ROOT) / render_evidence.PAGE_NAMES.get(kind, "report.html")
    assert page.is_file(), "scripts/render_evidence.py did not render it: see the errors it printed"
    shots = os.environ.get("REPORT_SCREENSHOTS")
    name = SCREENSHOTS.get(folder.relative_to(ROOT).as_posix())
    visit = browser.visit(page, screenshot=Path(shots) / name if shots and name else None)
    assert page_problems(visit) == []
    assert answer_problems(visit) == []
    assert any(u.endswith("/assets/plotly-basic.min.js") for u in visit.requests)  # linked, and it loaded
    assert visit.probe["figures"], "a report page without a single chart"


def test_every_report_module_is_opened_in_the_browser():
    modules = {m.name for m in pkgutil.iter_modules(reports.__path__) if m.name.endswith("_report")}
    covered = {MODULE_OF_KIND[kind] for _, _, kind in EVIDENCE}
    assert modules - covered == set(), ("report modules with no page in this test: add committed data, or a "
                                        "fixture under tests/fixtures/reports and its kind to render_evidence")


def _sweep_fixture(out: Path) -> Path:
    """A self-contained sweep page from part of the committed sweeps: two kinds, one with Figure 7's colouring."""
    from reports.sweep_report import write_outputs
    source = next((folder / "results.jsonl.gz" for _, folder, kind in EVIDENCE if kind == "sweeps"), None)
    if source is None or not source.is_file():
        pytest.skip("no committed sweep results (results.jsonl.gz) to build the page from")
    lines = [line for line in gzip.open(source, "rt") if (r := json.loads(line)).get("record") == "run"
             or (r.get("kind") in ("mm", "score") and r.get("x", 0) <= 4096)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.jsonl").write_text("".join(lines))
    return write_outputs([out], out)[1]


def test_self_contained_page_reads_offline_with_titled_charts(browser, tmp_path):
    page = _sweep_fixture(tmp_path / "sweep")
    visit = browser.visit(page)
    assert page_problems(visit) == []
    assert answer_problems(visit) == []
    assert [u for u in visit.requests if not u.startswith("data:")] == [page.resolve().as_uri()]  # nothing else
    assert visit.probe["figures"]


# ---- the checks fail on doctored pages -----------------------------------------------------------------
def _page(tmp_path: Path, figure: dict, **render) -> Path:
    page = tmp_path / "report.html"
    page.write_text(render_page("doctored", [Section("s", figures=[figure], tables=[])], **render))
    return page


GOOD = {"data": [{"type": "bar", "x": ["a", "b"], "y": [1, 2]}],
        "layout": layout("throughput by config", "config", "throughput (TFLOP/s)")}


def test_a_good_page_passes(browser, tmp_path):
    assert page_problems(browser.visit(_page(tmp_path, GOOD))) == []


def test_a_console_error_fails(browser, tmp_path):
    page = _page(tmp_path, GOOD)
    page.write_text(page.read_text().replace("</body>", "<script>console.error('deliberate')</script></body>"))
    assert page_problems(browser.visit(page)) == ["error: console.error: deliberate"]


def test_a_script_exception_fails(browser, tmp_path):
    page = _page(tmp_path, GOOD)
    page.write_text(page.read_text().replace("</body>", "<script>undefinedFunction()</script></body>"))
    (problem,) = page_problems(browser.visit(page))
    assert problem.startswith("error: uncaught: ReferenceError: undefinedFunction is not defined")


def test_a_request_off_the_machine_fails(browser, tmp_path):
    page = _page(tmp_path, GOOD)
    page.write_text(page.read_text().replace("</body>", '<img src="https://cdn.example.org/x.png"></body>'))
    problems = page_problems(browser.visit(page))
    assert "request off the machine: https://cdn.example.org/x.png" in problems


def test_a_linked_plotly_that_is_not_there_fails(browser, tmp_path):
    problems = page_problems(browser.visit(_page(tmp_path, GOOD, plotly_src="../assets/plotly-basic.min.js")))
    assert any("net::ERR_FILE_NOT_FOUND" in p for p in problems)
    assert any("Plotly is not defined" in p for p in problems)


def _doctor(page: Path, old: str, new: str) -> Path:
    """Edit a rendered page's figure JSON: what render_page would refuse to write."""
    text = page.read_text()
    assert old in text
    page.write_text(text.replace(old, new))
    return page


def test_a_chart_without_an_axis_title_fails(browser, tmp_path):
    page = _doctor(_page(tmp_path, GOOD), '"yaxis":{"title":{"text":"throughput (TFLOP/s)"}}', '"yaxis":{}')
    assert page_problems(browser.visit(page)) == ["fig-0-0 (throughput by config): no y axis title in the SVG"]


def test_a_chart_without_a_title_fails(browser, tmp_path):
    page = _doctor(_page(tmp_path, GOOD), '"text":"throughput by config"', '"text":""')
    assert page_problems(browser.visit(page)) == ["fig-0-0 (untitled): no title in the SVG"]


def test_a_title_under_the_toolbar_fails(browser, tmp_path):
    # plotly's own placement (centred, in the middle of a thin top margin) puts a long title under the toolbar
    long = "a long title that runs on to the right, under the toolbar that plotly draws at the top right of every chart"
    fig = {**GOOD, "layout": layout(long, "config", "throughput (TFLOP/s)")}
    page = _doctor(_page(tmp_path, fig), '"t":72', '"t":40')
    page = _doctor(page, '"title":{"y":1,"yref":"paper","yanchor":"bottom","pad":{"b":12},', '"title":{')
    assert page_problems(browser.visit(page)) == [f"fig-0-0 ({long}): the plotly toolbar covers the title"]


def test_a_table_wider_than_its_card_fails(browser, tmp_path):
    wide = pd.DataFrame([{f"a_rather_long_column_name_{i}": i for i in range(40)}])
    page = tmp_path / "report.html"
    from reports.html import table_html
    page.write_text(render_page("doctored", [Section("wide", tables=[table_html(wide)])]))
    assert page_problems(browser.visit(page)) == []  # scrolls inside its card
    _doctor(page, "max-width: 100%; overflow: auto;", "overflow: visible;")
    problems = page_problems(browser.visit(page))
    assert any(p.startswith("table 0 in 'wide' runs") for p in problems)


def test_a_legend_over_an_axis_title_fails(browser, tmp_path):
    # a horizontal legend under the chart, wide enough to reach the centred axis title
    fig = {"data": [{"type": "bar", "name": f"a legend entry long enough, number {i}", "x": ["a", "b"], "y": [1, 2]}
                    for i in range(4)],
           "layout": layout("throughput by config", "config", "throughput (TFLOP/s)",
                            legend={"orientation": "h", "y": -0.12})}
    problems = page_problems(browser.visit(_page(tmp_path, fig)))
    assert problems == ["fig-0-0 (throughput by config): the legend covers the x axis title 'config'"]


def _answer_page(tmp_path: Path, before: str = "") -> Path:
    page = tmp_path / "report.html"
    page.write_text(render_page("doctored", [Section("detail", figures=[GOOD])],
                                answer=Answer("the answer", GOOD, "a reading")))
    if before:
        _doctor(page, '<section class="answer"', before + '<section class="answer"')
    return page


def test_an_answer_chart_in_the_first_screen_passes(browser, tmp_path):
    visit = browser.visit(_answer_page(tmp_path))
    assert page_problems(visit) == [] and answer_problems(visit) == []
    assert visit.probe["answer"]["top"] < FIRST_SCREEN_PX


def test_an_answer_chart_below_the_first_screen_fails(browser, tmp_path):
    visit = browser.visit(_answer_page(tmp_path, before='<div style="height: 1000px">a wall of warnings</div>'))
    (problem,) = answer_problems(visit)
    assert problem.startswith("the answer chart starts at ") and problem.endswith("below the first 900 px")


def test_a_page_without_an_answer_chart_fails(browser, tmp_path):
    assert answer_problems(browser.visit(_page(tmp_path, GOOD))) == ["no answer chart (#answer-chart)"]


def test_a_title_cut_off_by_the_chart_edge_fails(browser, tmp_path):
    page = _doctor(_page(tmp_path, GOOD), '"yref":"paper","yanchor":"bottom"', '"yref":"container","yanchor":"middle"')
    assert page_problems(browser.visit(page)) == ["fig-0-0 (throughput by config): title cut off by the chart's edge"]


# ---- CPU pages read as CPU runs; no page names the machine that rendered it (issue 25, item 6) ---------
def _header(page: str) -> str:
    return page.split("</header>", 1)[0]


def test_a_cpu_sweep_page_says_cpu_and_draws_no_gemm_ceiling(tmp_path):
    from reports.sweep_report import write_outputs

    cpu = {"record": "run", "spec": {"kind": "mm"}, "environment": {"gpu_name": None, "cpu": "x86_64", "device": "cpu"}}
    points = [{"record": "point", "kind": "mm", "component": "mm", "batch": 1, "m": 256, "n": n, "k": 256,
               "dtype": "float32", "gpu": "cpu:x86_64", "tag": "", "x_name": "n", "x": n, "status": "ok",
               "tflops": 0.02 + n / 1e5, "median_ms": 1.0, "p10_ms": 0.9, "p90_ms": 1.1, "repeats": 10}
              for n in (64, 128, 192, 256)]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [cpu, *points]))
    page = write_outputs([tmp_path], tmp_path, plotly_src="plotly.js")[1].read_text()
    assert "CPU run" in _header(page) and "CPU: x86_64" in _header(page)
    assert "CUDA-event-timed" not in page and "host clock" in page
    assert "GEMM ceiling" not in page.split("<script>", 1)[-1]  # no ceiling line or label on any chart
    assert 'id="answer-chart"' in page


def test_the_diff_of_two_cpu_runs_says_cpu_and_counts_gflops_not_zero_tflops(tmp_path, capsys):
    from cli.main import profiler_main

    runs = (ROOT / "tests" / "fixtures" / "reports" / "carryover-tiny" / "layer-forward").as_posix()
    assert profiler_main(["diff", f"{runs}:tiny-a", f"{runs}:tiny-b", "--out", str(tmp_path / "d")]) == 0
    printed = capsys.readouterr().out
    assert "A_gflops" in printed and "A_tflops" not in printed
    table = printed.split("A_gflops", 1)[1].splitlines()[1]  # the first row: qkv_transform's GEMM
    assert float(table.split()[-4]) > 0  # a CPU GEMM's GFLOP/s, not a TFLOP/s that rounds to 0.0
    page = (tmp_path / "d" / "report.html").read_text()
    assert "CPU run" in _header(page)
    assert "throughput (GFLOP/s)" in page and "throughput (TFLOP/s)" not in page
    assert "A GFLOP/s" in page and "0.0 TFLOP/s" not in page


def test_cpu_bench_and_carryover_pages_say_cpu_in_their_header(tmp_path):
    source = ROOT / "tests" / "fixtures" / "reports" / "carryover-tiny"
    copy = tmp_path / "carryover-tiny"
    _copy_data(source, copy, "carryover")
    asset = render_evidence.install_assets(tmp_path)
    carry = render_evidence.render(copy, "carryover", asset).read_text()
    bench = render_evidence.render(copy / "bench", "inference", asset).read_text()
    for page in (carry, bench):
        assert "CPU run" in _header(page) and "Measured on CPU" in _header(page)


KIND_SAMPLES = {kind: (root, folder) for root, folder, kind in reversed(EVIDENCE)}  # one folder of each kind


@pytest.mark.parametrize("kind", sorted(KIND_SAMPLES))
def test_a_page_names_no_path_of_the_machine_that_rendered_it(tmp_path, kind):
    root, folder = KIND_SAMPLES[kind]
    here = tmp_path / "render" / folder.relative_to(ROOT)
    _copy_data(folder, here, kind)
    page = render_evidence.render(here, kind, render_evidence.install_assets(tmp_path / "render")).read_text()
    for path in (str(tmp_path), str(ROOT), str(Path.home())):
        assert path not in page, f"{kind} page names {path}"


def test_no_committed_page_names_an_absolute_path():
    pages = sorted((ROOT / "evidence").rglob("*.html"))
    found = {p.relative_to(ROOT).as_posix(): m.group(0) for p in pages
             if (m := re.search(r"(?<![\w.:/])/(tmp|work|root|home|Users|mnt|scratch)/[\w./+-]*", p.read_text()))}
    assert found == {}


# ---- the answer first, the detail folded (issue 24) ----------------------------------------------------
def test_repeated_notes_are_grouped_with_a_count_and_tables_fold_under_their_chart():
    from reports.html import grouped_notes

    assert grouped_notes(["slow clock", "b", "slow clock", "slow clock"]) == ["slow clock (\u00d73)", "b"]
    table = table_html(pd.DataFrame({"x": [1, 2, 3]}))
    page = render_page("t", [Section("charted", figures=[GOOD], tables=[table], notes=["n", "n", "m"]),
                             Section("tables only", tables=[table])], environment={"torch": "2.13"})
    charted, tables_only = page.split("<h2>charted</h2>", 1)[1].split("<h2>tables only</h2>", 1)
    assert "<details open>" in page.split("<h2>charted</h2>", 1)[0].rsplit("<section", 1)[1]  # a chart stays open
    assert "<summary>Table: 3 rows</summary>" in charted and "<li>n (\u00d72)</li>" in charted
    assert "2 notes (3 before repeats were grouped)" in charted
    assert "<details open>" not in page.split("<h2>tables only</h2>", 1)[0].rsplit("<section", 1)[1]  # folded
    assert "1 table" in tables_only and '<section class="fold"><details>\n  <summary><h2>Environment</h2>' in page


def test_the_answer_comes_before_everything_else_and_is_checked_like_any_chart():
    page = render_page("t", [Section("detail", figures=[GOOD])], how_to_read="read me",
                       answer=Answer("the answer", GOOD, "computed reading"))
    assert page.index('id="answer-chart"') < page.index("<h2>How to read this report</h2>") < page.index("<h2>detail</h2>")
    assert "computed reading" in page
    unlabelled = {"data": GOOD["data"], "layout": layout("no axis titles")}
    with pytest.raises(FigureError, match="section 'answer', 'no axis titles': no xaxis title"):
        render_page("t", [], answer=Answer("a", unlabelled, "r"))


def _layer_run(latency_us: float, floor_ratio: float | None) -> tuple[dict, pd.DataFrame]:
    entry = {"name": "c1", "status": "ok", "latency_us": {"median": latency_us}, "floor_ratio": floor_ratio,
             "checks_summary": {"failed": []}}
    components = pd.DataFrame({"config": ["c1"] * 3, "pass": ["forward"] * 3, "kind": ["gemm", "gemm", "other"],
                               "component": ["qkv_transform", "mlp_up", "norm"], "time_us": [100.0, 184.0, 80.0]})
    return {"configs": [entry], "environment": {"gpu_name": "GPU"}}, components


def test_the_layer_reading_is_written_from_the_run():
    from reports.layer_report import layer_answer

    answer = layer_answer(*_layer_run(400.0, 1.12))
    assert answer.reading.startswith("c1: GEMMs take 71% of its 400 \u00b5s, idle and launch gaps 9%; x_floor 1.12")
    other = layer_answer(*_layer_run(568.0, None))
    assert "GEMMs take 50% of its 568 \u00b5s" in other.reading and "No floor was measured" in other.reading
    assert [a["text"] for a in answer.figure["layout"]["annotations"]] == ["x_floor 1.12"]


def test_a_carryover_point_without_an_interval_is_drawn_without_one_and_the_reading_says_so():
    from reports.carryover_report import carryover_answer

    rows = []
    for model, train, prefill, decode in (("base", 0.0, 0.0, 0.0), ("wide", 0.10, 0.08, 0.02)):
        for prompt in (128, 2048):
            rows.append({"engine": "hf", "batch": 1, "prompt_len": prompt, "model": model, "params_total": 1e9,
                         "train_fwdbwd_gain": train, "train_fwdbwd_gain_lo": train - 0.01,
                         "train_fwdbwd_gain_hi": train + 0.01, "prefill_gain": prefill, "prefill_gain_lo": prefill - 0.02,
                         "prefill_gain_hi": prefill + 0.02, "decode_gain": decode,
                         "decode_gain_lo": None, "decode_gain_hi": None})
    verdicts = pd.DataFrame([{"engine": "hf", "batch": 1, "model": "wide", "verdict": "...",
                              "carries_over": "carries over"}])
    answer = carryover_answer(pd.DataFrame(rows), verdicts, "base")
    traces = {t["name"]: t for t in answer.figure["data"]}
    assert traces["prefill (p=2048)"]["x"] == [1.1] and traces["prefill (p=2048)"]["y"] == [1.08]
    assert traces["prefill (p=2048)"]["error_y"]["array"] == [pytest.approx(0.02)]
    assert traces["decode (p=128)"]["error_y"]["array"] == [0]  # no interval in the data: none drawn
    assert "Drawn without an interval (none in the data): wide decode." in answer.reading
    assert "wide: carries over" in answer.reading
    assert traces["perfect carry-over (y = x)"]["x"] == traces["perfect carry-over (y = x)"]["y"]


def test_an_advisor_run_without_measurements_answers_with_the_model_alone_and_says_so():
    from reports.advisor_report import advisor_answer

    doc = json.loads((ROOT / "tests" / "fixtures" / "reports" / "advisor-gpt3-2.7b" / "advice.json").read_text())
    answer = advisor_answer(doc)
    assert [t["name"] for t in answer.figure["data"]] == ["modelled (cost model)"]
    assert answer.reading.startswith("Nothing was measured") and "no interval" in answer.reading
    best = max((c for c in doc["candidates"] if not c["is_given"]), key=lambda c: c["modelled_speedup"])
    assert f"{best['name']}" in answer.reading and f"{best['modelled_speedup']:.3f}x" in answer.reading

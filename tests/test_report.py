"""The HTML compile report (`tamec compile --report`, `tamec inspect DIR --html`), driven in a
real headless Chromium through selenium and the system chromedriver (nothing is downloaded).

.ci/run installs Debian's chromium and chromium-driver; locally the browser tests skip without them.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import tamec
from tamec.cli import main as cli
from tests.conftest import MODELS, TFC

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
FULL = "canonicalize,binarize-weights,fold-thresholds,bounds,partition,lower-mip,dualize,tame-check"


def run_cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("no chromium / chromedriver on PATH (apt-get install chromium chromium-driver; .ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium missing: pip install -e '.[test]'")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)  # an explicit driver: no Selenium Manager
    yield d
    d.quit()


def _report(tmp_factory, name, model, pipeline, **kw):
    """Compile `model` with dumps, then `tamec inspect DIR --html`; returns (dir, html, module)."""
    d = tmp_factory.mktemp(name)
    m = tamec.compile(str(model), pipeline, dump_dir=d / "dump", **kw)
    rc, out, err = run_cli("inspect", d / "dump", "--html", d / "report.html")
    assert rc == 0, err
    return d / "dump", d / "report.html", m


MODELS_UNDER_TEST = [
    pytest.param(("mlp", MODELS / "mlp_sign.onnx", FULL, {"check": 8, "executor": "threads"}), id="mlp_sign-full"),
    pytest.param(("cnn", MODELS / "cnn_sign.onnx", None, {"check": 8}), id="cnn_sign"),
    pytest.param(("ties", MODELS / "sign_ties.onnx", None, {"tighten": "lp"}), id="sign_ties-lp"),
    pytest.param(("tfc", TFC, None, {"check": 8}), id="TFC_1W1A",
                 marks=pytest.mark.skipif(not TFC.exists(), reason="no ../shared/models/TFC_1W1A.onnx")),
]


@pytest.fixture(scope="module", params=MODELS_UNDER_TEST)
def report(request, tmp_path_factory):
    name, model, pipeline, kw = request.param
    return _report(tmp_path_factory, name, model, pipeline, **kw)


def _open(d, html: Path):
    d.get_log("browser"), d.get_log("performance")  # drop earlier pages' entries
    d.get(html.as_uri())
    assert d.execute_script("return document.body.dataset.ready") == "1"


def _open_all(d):
    d.execute_script("document.querySelectorAll('details.pass').forEach(s => { s.open = true; })")
    return d.execute_script("return [...document.querySelectorAll('details.pass')].map(s => s.dataset.drawn)")


def _diff_ops(text: str) -> dict[str, set[str]]:
    """The op ids `tamec diff` prints as removed (-), added (+) and changed (~)."""
    out = {"removed": set(), "added": set(), "changed": set()}
    kinds = {"-": "removed", "+": "added", "~": "changed"}
    for ln in text.splitlines():
        if not ln[:5] in ("- op ", "+ op ", "~ op "):
            continue
        rest = ln[5:]
        if rest.startswith('"'):
            op_id, _ = json.JSONDecoder().raw_decode(rest)
        else:
            op_id = rest.split(" ", 1)[0]
            op_id = op_id[:-1] if ln[0] == "~" else op_id  # "~ op ID: field ..."
        out[kinds[ln[0]]].add(op_id)
    return out


def test_loads_without_errors_or_requests(browser, report):
    """The page opens from disk with no console message and no request but the file itself."""
    _, html, _ = report
    _open(browser, html)
    _open_all(browser)
    assert browser.get_log("browser") == []
    urls = [json.loads(e["message"])["message"].get("params", {}).get("request", {}).get("url")
            for e in browser.get_log("performance")]
    urls = {u for u in urls if u}
    assert urls <= {html.as_uri(), "data:,"}, urls  # data:, is the inline blank favicon
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert "<script src" not in html.read_text() and "<link rel=\"stylesheet\"" not in html.read_text()


def test_every_pass_section_present(browser, report):
    """One section per dumped pass, in pipeline order, each drawing its graph when opened."""
    dump, html, m = report
    _open(browser, html)
    ids = browser.execute_script("return [...document.querySelectorAll('details.pass')].map(s => s.id)")
    dumps = sorted(p for p in dump.glob("*.tir") if not p.name.endswith(".mip.tir"))
    assert ids == [f"pass-{int(p.name[:2])}" for p in dumps]
    assert [r.name for r in m.history] == [p.stem[3:] for p in dumps]
    assert browser.execute_script("return document.querySelectorAll('svg.g').length") == 0  # lazy
    assert _open_all(browser) == ["1"] * len(dumps)
    counts = browser.execute_script(
        "return [...document.querySelectorAll('details.pass')].map(s => s.querySelectorAll('.node.op').length)")
    assert counts == [sum(r.op_counts.values()) for r in m.history]


def test_click_op_shows_attributes(browser, report):
    """Clicking a Threshold of the last pass shows its tie, flip, tau and ONNX node."""
    dump, html, m = report
    from selenium.webdriver.common.by import By

    _open(browser, html)
    last = len(m.history) - 1
    op = next(o for o in m.graph.ops() if o.qualname == "tamec.Threshold")
    browser.execute_script(f"document.getElementById('pass-{last}').open = true")
    node = next(e for e in browser.find_elements(By.CSS_SELECTOR, f"#pass-{last} .node.op")
                if e.get_attribute("data-id") == op.id)
    node.click()
    rows = browser.execute_script(
        f"return [...document.querySelectorAll('#pass-{last} .inspector table.attributes tr')]"
        ".map(r => [r.cells[0].textContent, r.cells[1].textContent])")
    attrs = dict(rows)
    assert float(attrs["tie"]) == float(op.attrs["tie"])
    assert set(attrs) == set(op.attrs)
    ins = browser.find_element(By.CSS_SELECTOR, f"#pass-{last} .inspector").text
    assert op.id in ins and op.origin[0] in ins and op.outputs[0] in ins
    assert str(m.graph.values[op.outputs[0]].domain) in ins


def test_diff_highlights_match_tamec_diff(browser, report):
    """Added / changed ops drawn highlighted and removed ops listed are those `tamec diff` prints."""
    dump, html, _ = report
    _open(browser, html)
    _open_all(browser)
    dumps = sorted(p for p in dump.glob("*.tir") if not p.name.endswith(".mip.tir"))
    seen = 0
    for a, b in zip(dumps, dumps[1:]):
        rc, out, _ = run_cli("diff", a, b)
        assert rc == (0 if out.strip() == "no differences" else 1)  # as diff(1)
        want = _diff_ops(out)
        k = int(b.name[:2])
        got = browser.execute_script(f"""const s = document.getElementById('pass-{k}');
            const ids = c => [...s.querySelectorAll('.node.op.' + c)].map(e => e.dataset.id);
            return {{added: ids('added'), changed: ids('changed'),
                     removed: [...s.querySelectorAll('ul.removed li')].map(e => e.textContent),
                     text: s.querySelector('pre.diff').textContent}};""")
        assert {key: set(got[key]) for key in want} == want, b.name
        assert got["text"] == (out.strip() if out.strip() != "no differences" else "no differences")
        seen += sum(map(len, want.values()))
    assert seen > 0  # the pipeline changed something, so the comparison had content


def test_search_finds_node(browser, report):
    """Searching an ONNX node name lists the op in every pass holding it; a click selects it."""
    _, html, m = report
    from selenium.webdriver.common.by import By

    _open(browser, html)
    op = next(o for o in m.graph.ops() if o.qualname == "tamec.Threshold")
    box = browser.find_element(By.ID, "search")
    box.send_keys(op.origin[0])
    hits = browser.find_elements(By.CSS_SELECTOR, "#results li.hit")
    mine = [h for h in hits if h.get_attribute("data-node") == op.id]
    assert mine and int(mine[-1].get_attribute("data-pass")) == len(m.history) - 1
    mine[-1].click()
    k = mine[-1].get_attribute("data-pass")
    sel = browser.execute_script(f"return [...document.querySelectorAll('#pass-{k} .node.selected')]"
                                 ".map(e => e.dataset.id)")
    assert sel == [op.id]
    assert op.id in browser.find_element(By.CSS_SELECTOR, f"#pass-{k} .inspector").text
    box.clear()
    box.send_keys("no-such-name-anywhere")
    assert browser.find_elements(By.CSS_SELECTOR, "#results li.hit") == []


def test_screenshot_not_blank(browser, report):
    """A screenshot of the page with a pass drawn has real content (many colours, not one)."""
    _, html, m = report
    from matplotlib.image import imread

    _open(browser, html)
    browser.execute_script(f"document.getElementById('pass-{len(m.history) - 1}').open = true;"
                           f"document.getElementById('pass-{len(m.history) - 1}').scrollIntoView()")
    png = browser.get_screenshot_as_png()
    img = imread(io.BytesIO(png), format="png")[..., :3]
    assert img.shape[0] > 500 and img.shape[1] > 1000
    rgb = (img.reshape(-1, 3) * 255).astype(np.int64)
    colours = np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2])
    assert len(colours) > 50 and img.std() > 0.05


def test_bounds_and_mip_sections(browser, report):
    """Bounds per layer as in the module's report (LP columns with --tighten lp); with the MIP
    pipeline, one row per block and a certificate and lazily inserted dual chart per block."""
    _, html, m = report
    from selenium.webdriver.common.by import By

    _open(browser, html)
    rows = browser.execute_script("return [...document.querySelectorAll('#bounds tbody tr')]"
                                  ".map(r => [...r.cells].map(c => c.textContent))")
    want = m.reports["bounds"]
    assert [r[0] for r in rows] == [r["op"] for r in want]
    assert [int(r[2]) for r in rows] == [r["stable"] for r in want]
    head = browser.find_element(By.CSS_SELECTOR, "#bounds thead").text
    assert ("stable (LP)" in head) == ("stable_tightened" in want[0])
    assert browser.find_elements(By.CSS_SELECTOR, "#bounds .chart svg")
    blocks = m.reports.get("lower-mip") or []
    got = browser.execute_script("return [...document.querySelectorAll('#mip > table tbody tr')]"
                                 ".map(r => [...r.cells].map(c => c.textContent))")
    assert [(r[0], int(r[2]), int(r[6])) for r in got] == [(b["block"], b["vars"], b["rows"]) for b in blocks]
    tame = {t["block"]: t["verdict"] for t in m.reports.get("tame-check") or []}
    assert [r[-1] for r in got] == [tame[b["block"]] for b in blocks]
    for k, b in enumerate(blocks):
        if b["kind"] != "binarized":
            continue
        sel = f"#block-{k} .chart.dual svg"
        assert browser.find_elements(By.CSS_SELECTOR, sel) == []  # not drawn until opened
        browser.execute_script(f"document.querySelector('#block-{k} > summary').click()")
        assert browser.find_elements(By.CSS_SELECTOR, sel)
        cert = browser.find_element(By.CSS_SELECTOR, f"#block-{k} .cert").text
        assert tame[b["block"]] in cert and "compactness" in cert


def _break_threshold(monkeypatch):
    """Register a pass that flips every Threshold (a deliberate bug --check must catch)."""
    from tamec.passmanager import REGISTRY, Pass, _load_passes

    _load_passes()

    class Broken(Pass):
        name = "broken-for-report"

        def rewrite(self, g, ctx, module):
            for op in g.ops():
                if op.qualname == "tamec.Threshold":
                    op.attrs["flip"] = ~np.asarray(op.attrs["flip"])
            return {}

    monkeypatch.setitem(REGISTRY, Broken.name, Broken)


def test_check_divergence_dumped(monkeypatch, tmp_path):
    """A --check divergence still dumps the diverging pass and records the tensor in stats.json."""
    from tamec.errors import CheckMismatchError

    _break_threshold(monkeypatch)
    with pytest.raises(CheckMismatchError):
        tamec.compile(str(MODELS / "mlp_sign.onnx"), ["canonicalize", "broken-for-report"], check=4,
                      dump_dir=tmp_path)
    assert (tmp_path / "02-broken-for-report.tir").is_file()
    first = tamec.compile(str(MODELS / "mlp_sign.onnx"), ["canonicalize"]).graph
    thr = next(o for o in first.ops() if o.qualname == "tamec.Threshold")
    rec = json.loads((tmp_path / "stats.json").read_text())["passes"][-1]
    assert rec["name"] == "broken-for-report"
    assert rec["stats"]["check_failed"]["tensor"] == thr.outputs[0]
    assert rec["stats"]["check_failed"]["op"] == thr.id


def test_report_shows_check_divergence(browser, monkeypatch, tmp_path):
    """`tamec compile --check --report` on a broken pass exits 2 and still writes a report that
    names the first diverging tensor and highlights its op in the broken pass's graph."""
    _break_threshold(monkeypatch)
    html = tmp_path / "r.html"
    rc, out, err = run_cli("compile", MODELS / "mlp_sign.onnx", "--pipeline", "canonicalize,broken-for-report",
                           "--check", 4, "--report", html)
    assert rc == 2 and "first diverging tensor" in err and str(html) in err
    first = tamec.compile(str(MODELS / "mlp_sign.onnx"), ["canonicalize"]).graph
    thr = next(o for o in first.ops() if o.qualname == "tamec.Threshold")
    _open(browser, html)
    banner = browser.execute_script("return document.getElementById('divergence').textContent")
    assert f"%{thr.outputs[0]}" in banner and "broken-for-report" in banner
    state = browser.execute_script("""const s = document.getElementById('pass-2');
        return {open: s.open, diverged: [...s.querySelectorAll('.node.diverged')].map(e => e.dataset.id),
                edges: s.querySelectorAll('.edge.diverged').length,
                row: document.querySelector('#pipeline tr.diverged td').textContent};""")
    assert state["open"] and state["diverged"] == [thr.id] and state["edges"] >= 1
    assert state["row"] == "broken-for-report"
    assert browser.get_log("browser") == []


def test_report_cli_errors(tmp_path):
    """A report path in a missing folder is refused before compiling; inspect --html needs dumps."""
    rc, _, err = run_cli("compile", MODELS / "mlp_sign.onnx", "--report", tmp_path / "nope" / "r.html")
    assert rc == 2 and "does not exist" in err
    rc, _, err = run_cli("inspect", tmp_path, "--html", tmp_path / "r.html")
    assert rc == 2 and "stats.json" in err
    (tmp_path / "stats.json").write_text('{"passes": []}')
    rc, _, err = run_cli("inspect", tmp_path, "--html", tmp_path / "r.html")
    assert rc == 2 and ".tir" in err


def test_compile_report_without_dump_dir(tmp_path):
    """`tamec compile --report` alone writes the page (from a temporary dump folder it removes)."""
    html = tmp_path / "r.html"
    rc, out, err = run_cli("compile", MODELS / "sign_ties.onnx", "--report", html)
    assert rc == 0, err
    text = html.read_text()
    assert text.startswith("<!DOCTYPE html>") and 'id="pass-4"' in text and "report: " in out
    assert list(tmp_path.iterdir()) == [html]

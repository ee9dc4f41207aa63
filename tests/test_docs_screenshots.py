"""The built site as a reader sees it: headless Chromium (Debian's package), offline, 1280 px wide.

Builds the site strictly, serves it on localhost and, for every page (Home, Quickstart,
Concepts, API and Adapters first), fails on Sphinx roles or cross-references left as raw text,
diagram source that was not rendered (a mermaid chart needs its library from a CDN), anything
running past the content column or cut inside a scrolling code block or table, broken images,
and requests that leave localhost. A screenshot of each page is written to
``$GSWA_SCREENSHOTS_DIR`` (default: a temporary folder) for a person to look at;
``$GSWA_DOCS_SITE`` serves an already built site instead of building one.

Marked ``screenshots``: kept out of the default run, run by ``.ci/steps/10-docs.sh``, which
installs Chromium (``apt-get install chromium``) and Playwright (the ``screenshots`` extra) first.
Playwright drives the system Chromium (``executable_path``); no browser is downloaded.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.screenshots

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("GSWA_CHROMIUM", "/usr/bin/chromium")
WIDTH, HEIGHT = 1280, 900
# Every page of the site: Home, Quickstart, Concepts, API and Adapters first, as a new user reads them.
FIRST = ["index.md", "quickstart.md", "concepts.md", "api.md", "adapters.md"]
_ALL = sorted(
    str(p.relative_to(ROOT / "docs"))
    for p in (ROOT / "docs").rglob("*.md")
    if p.relative_to(ROOT / "docs").parts[0] not in ("examples", "assets")
)
PAGES = {
    ("home" if md == "index.md" else md[:-3].replace("/", "-")): ("" if md == "index.md" else md[:-3] + "/")
    for md in FIRST + [m for m in _ALL if m not in FIRST]
}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Everything measured in the page itself, in one evaluation per page.
MEASURE_JS = """
() => {
  const content = document.querySelector('.md-content__inner');
  const right = content.getBoundingClientRect().right;
  // the prose as rendered; code blocks are code (a docstring inside an example is Python)
  const prose = content.cloneNode(true);
  prose.querySelectorAll('pre, .highlight').forEach((el) => el.remove());
  document.body.appendChild(prose);
  const text = prose.innerText;
  prose.remove();
  const describe = (el) => el.tagName.toLowerCase() + (el.className && typeof el.className === 'string'
      ? '.' + el.className.trim().split(/\\s+/).join('.') : '') + ': ' + (el.innerText || '').trim().slice(0, 80);
  const past = [];
  for (const el of content.querySelectorAll('*')) {
    const box = el.getBoundingClientRect();
    if (box.width === 0 || el.closest('.md-typeset__scrollwrap, .highlight')) continue;
    if (box.right > right + 4) {  // an inline code box's padding may overhang a few px
      past.push(describe(el) + ` (right edge ${Math.round(box.right)} > ${Math.round(right)})`);
    }
  }
  const cut = [];
  for (const el of content.querySelectorAll('pre, pre > code, .md-typeset__table, table, .md-typeset__scrollwrap')) {
    if (el.scrollWidth > el.clientWidth + 1) {
      cut.push(describe(el) + ` (${el.scrollWidth} px wide in ${el.clientWidth})`);
    }
  }
  const images = [...content.querySelectorAll('img')]
    .filter((i) => !i.complete || i.naturalWidth === 0)
    .map((i) => i.src);
  const svgText = [...content.querySelectorAll('svg[role="img"] text')].map((t) => t.getBoundingClientRect().height);
  return {
    text,
    past,
    cut,
    images,
    mermaid: content.querySelectorAll('.mermaid, pre.mermaid, div.mermaid').length,
    svgs: content.querySelectorAll('svg[role="img"]').length,
    svgTextMin: svgText.length ? Math.min(...svgText) : null,
    pageWidth: document.documentElement.scrollWidth,
  };
}
"""

RAW_PATTERNS = {
    "a Sphinx role": r":(?:py:)?(?:class|func|meth|data|mod|attr|exc|obj|const|ref):`",
    "an unresolved cross-reference": r"\]\[(?:gswa_plugin|[a-z_]+\.[\w.]+)\]",
    "mermaid source": r"(?m)^\s*(?:flowchart|graph) (?:LR|TD|TB|RL)\b",
    "an RST literal": r"``\w",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built strictly (or the one ``$GSWA_DOCS_SITE`` names, just built), served on localhost."""
    if os.environ.get("GSWA_DOCS_SITE"):
        out = Path(os.environ["GSWA_DOCS_SITE"]).resolve()
    else:
        out = tmp_path_factory.mktemp("site")
        env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
        subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT, check=True, env=env
        )
    handler = functools.partial(_QuietHandler, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() and not shutil.which(CHROMIUM):
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set GSWA_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("GSWA_SCREENSHOTS_DIR")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize("name", PAGES)
def test_page_reads_offline_at_1280px(name, site, browser, shots):
    import re

    page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
    outside: list[str] = []

    def offline(route):  # the reader is offline: anything not on localhost is refused and recorded
        if route.request.url.startswith(site):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", offline)
    response = page.goto(site + PAGES[name], wait_until="load")
    assert response is not None and response.ok, f"{site + PAGES[name]}: HTTP {response and response.status}"
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    seen = page.evaluate(MEASURE_JS)
    page.close()

    problems = []
    for what, pattern in RAW_PATTERNS.items():
        for m in re.finditer(pattern, seen["text"]):
            problems.append(f"{what} shown as text: ...{seen['text'][max(0, m.start() - 40) : m.end() + 40]!r}...")
    if seen["mermaid"]:
        problems.append(f"{seen['mermaid']} mermaid block(s): they need a script from a CDN and show as source offline")
    problems += [f"runs past the content column: {p}" for p in seen["past"]]
    problems += [f"cut (scrolls sideways): {c}" for c in seen["cut"]]
    if seen["pageWidth"] > WIDTH:
        problems.append(f"the page is {seen['pageWidth']} px wide at a {WIDTH} px window")
    problems += [f"image did not load: {src}" for src in seen["images"]]
    problems += [f"requested from outside localhost: {url}" for url in outside]
    if seen["svgs"] and seen["svgTextMin"] is not None and seen["svgTextMin"] < 11:
        problems.append(f"a diagram label is {seen['svgTextMin']:.1f} px high (under 11 px)")
    if name == "concepts" and not seen["svgs"]:
        problems.append("the Concepts page has no rendered diagram")
    assert not problems, f"{name} ({site + PAGES[name]}, screenshot {shots / (name + '.png')}):\n" + "\n".join(problems)

"""The book read in Chromium at 1280 px, as a researcher reads it: every page opens with its
title, tables fit the text column, figures carry captions, no cell reads "nan", no header is
a code name, no Markdown marker is left in the text, and every chapter's title is the one the
introduction's table gives it. A screenshot of every page goes to build/screenshots/ for review.

Two books are read: the committed one, built as `make book` builds it (its pages may be older
runs, so it gets the checks that do not depend on the code that ran them), and every chapter
executed now at the smoke profile, which gets them all."""
import functools
import http.server
import os
import re
import threading
from pathlib import Path

import pytest

from reprolib import book

from test_book import project_copy

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("REPRO_CHROMIUM", "/usr/bin/chromium"))
SHOTS = ROOT / "build" / "screenshots"
CHAPTERS = ["attacks", "linf_pruning", "neural_polarizer", "none", "mesa", "clear", "comparison"]
# page: (words of its title, at least this many tables, at least this many images)
PAGES = {"book/intro.html": ("Backdoor defenses, reproduced", 2, 0),
         "book/runs/attacks.html": ("The attacks", 2, 1),
         "book/runs/linf_pruning.html": ("neuron pruning", 6, 6),
         "book/runs/neural_polarizer.html": ("Neural Polarizer", 7, 4),
         "book/runs/none.html": ("NONE", 8, 4),
         "book/runs/mesa.html": ("MESA", 8, 6),
         "book/runs/clear.html": ("CLEAR", 6, 4),
         "book/runs/comparison.html": ("Every defense against every attack", 6, 2),
         "book/scorecard.html": ("Scorecard", 7, 0),
         "book/bibliography.html": ("Bibliography", 0, 0),
         "book/using/installing.html": ("Installing and testing", 1, 0),
         "book/using/running.html": ("Running chapters", 0, 0),
         "book/using/profiles.html": ("Profiles, models and seeds", 2, 0),
         "book/using/data.html": ("Data", 0, 0),
         "book/using/cache.html": ("The cache, jobs, Ray and GPUs", 0, 0),
         "book/using/library.html": ("The library", 0, 0),
         "book/using/reliability.html": ("Reliability", 3, 0)}

# What the page shows, measured in the browser: the text column is the width of the article's
# paragraphs; a table is too wide when it reaches past it or scrolls inside a container.
MEASURE = """() => {
  const article = document.querySelector('article');
  const column = [...article.querySelectorAll('p')].reduce(
      (right, p) => Math.max(right, p.getBoundingClientRect().right), 0);
  const wide = [...article.querySelectorAll('table')].filter(t => {
    if (t.getBoundingClientRect().right > column + 1) return true;
    for (let p = t.parentElement; p && p !== article; p = p.parentElement) {
      if (p.scrollWidth > p.clientWidth + 1) return true;
    }
    return false;
  }).map(t => [...t.querySelectorAll('th')].map(h => h.innerText).join(' | ').slice(0, 120));
  const uncaptioned = [...article.querySelectorAll('img')].filter(i => {
    const figure = i.closest('figure');
    const caption = figure && figure.querySelector('figcaption');
    return !caption || !caption.innerText.trim();
  }).length;
  const cells = [...article.querySelectorAll('td')].map(c => c.innerText.trim());
  const headers = [...article.querySelectorAll('th')].map(c => c.innerText.trim());
  const prose = article.cloneNode(true);
  prose.querySelectorAll('pre, code, .cell_input, details.hide, script, style, .math, ' +
                         'mjx-container').forEach(e => e.remove());
  const title = article.querySelector('h1').innerText.replace(/#$/, '').trim();
  return {column, wide, uncaptioned, cells, headers, text: prose.innerText, title,
          images: [...article.querySelectorAll('img')].map(i => i.complete ? i.naturalWidth : 0),
          tables: article.querySelectorAll('table').length};
}"""
MARKDOWN = re.compile(r"\*\*|\]\(|`|(?<![\w*])\*[A-Za-z]|[A-Za-z]\*(?![\w*])|^\s*\+ ", re.M)
SNAKE = re.compile(r"[A-Za-z0-9]_[A-Za-z0-9]")


def served(html: Path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Quiet, directory=str(html)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def read_book(html: Path, shots: Path) -> dict[str, dict]:
    """Every page of PAGES measured (MEASURE), a full-page screenshot of each in `shots`; and
    under "intro-entries", the chapter titles the introduction's verdict table links to."""
    assert CHROMIUM.exists(), (f"the browser check needs Chromium at {CHROMIUM}: on Debian "
                               f"`apt-get install chromium`, or point $REPRO_CHROMIUM at one")
    from playwright.sync_api import sync_playwright
    shots.mkdir(parents=True, exist_ok=True)
    server, base = served(html)
    found = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            for path in PAGES:
                response = page.goto(f"{base}/{path}", wait_until="load")
                assert response.ok, path
                found[path] = page.evaluate(MEASURE)
                found[path]["first"] = page.eval_on_selector(
                    "article h1", "h => h.nextElementSibling.tagName")
                found[path]["cited"] = page.locator("article a[href*='bibliography.html#']").count()
                found[path]["glued"] = page.locator("article .pasted-text").count()
                page.screenshot(path=str(shots / (path.replace("/", "-")[5:-5] + ".png")),
                                full_page=True)
            page.goto(f"{base}/book/intro.html", wait_until="load")
            found["intro-entries"] = dict(page.eval_on_selector_all(
                "article table a[href*='runs/']",
                "links => links.map(a => [a.getAttribute('href').split('/').pop().split('.')[0], "
                "a.innerText.trim()])"))
            browser.close()
    finally:
        server.shutdown()
    return found


def opens_with_its_title_tables_and_images(found: dict) -> None:
    for path, (title, min_tables, min_images) in PAGES.items():
        page = found[path]
        assert title in page["title"], path
        assert page["tables"] >= min_tables, path
        assert len(page["images"]) >= min_images, path
        assert all(width > 0 for width in page["images"]), f"{path}: images not loaded"
        assert page["first"] == "P", f"{path}: the page opens with code, not prose"
        if "/runs/" in path:
            assert page["cited"], f"{path}: cites no source linked to the bibliography"
            assert page["glued"] >= 3, f"{path}: the prose quotes no measured number"
        # (the "Using the suite" pages name the folders the suite reads, on purpose)
        assert "/using/" in path or ".partial" not in page["text"] and not re.search(
            r"(?<![\w.:/])/(home|root|tmp|work|usr|var|opt)/", page["text"]), f"{path}: a path"


def reads_at_a_glance(found: dict) -> list[str]:
    """What a reader would stumble on, page by page."""
    problems = []
    for path in PAGES:
        page = found[path]
        problems += [f"{path}: a table wider than the text column: {t}" for t in page["wide"]]
        if page["uncaptioned"]:
            problems.append(f"{path}: {page['uncaptioned']} figure(s) without a caption")
        problems += [f"{path}: a cell reads {c!r}" for c in page["cells"]
                     if re.fullmatch(r"(?i)-?nan", c)]
        problems += [f"{path}: a code name as a header: {h!r}" for h in page["headers"]
                     if SNAKE.search(h)]
        problems += [f"{path}: a Markdown marker in the text: "
                     f"{page['text'][max(0, m.start() - 30):m.end() + 30]!r}"
                     for m in MARKDOWN.finditer(page["text"])]
    for chapter, entry in found["intro-entries"].items():
        title = found[f"book/runs/{chapter}.html"]["title"]
        if entry != title:
            problems.append(f"the introduction calls {chapter} {entry!r}, its page {title!r}")
    if set(found["intro-entries"]) != set(CHAPTERS):
        problems.append(f"the introduction's table lists {sorted(found['intro-entries'])}")
    return problems


@pytest.fixture(scope="module")
def committed_book(tmp_path_factory):
    """The committed book built as `make book` builds it on a fresh clone, over an empty zoo."""
    root = project_copy(tmp_path_factory.mktemp("book"), runs=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("REPRO_CACHE_DIR", str(root / "zoo"))
    try:
        html = book.build(root, progress=False)
    finally:
        mp.undo()
    return root, html


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory):
    """Every chapter executed now at the smoke profile, and the book built from those pages;
    the one tests/smoke_book.py made when $REPRO_SMOKE_BOOK names it (`make test`)."""
    made = os.environ.get("REPRO_SMOKE_BOOK")
    if made:
        return Path(made), Path(made) / "_build" / "html"
    root = project_copy(tmp_path_factory.mktemp("smoke-book"))
    return root, book.build(root, rerun=True, profile="smoke", progress=False)


@pytest.mark.notebook
def test_the_committed_book_builds_without_running_a_chapter(committed_book):
    import json
    root, html = committed_book
    assert not (root / "zoo").exists(), "building the committed book trained something"
    datasets = set()
    for chapter in book.chapters(root):
        assert (html / "book" / "runs" / f"{chapter}.html").is_file()
        result = json.loads((root / "book" / "results" / f"{chapter}.json").read_text())
        assert result["comparison"], f"{chapter} compared nothing with its paper"
        assert f"notebooks/{chapter}.ipynb" in result["record"]["executed"]
        datasets.add(result["record"]["dataset"])
    card = (html / "book" / "scorecard.html").read_text()
    assert card.count("<tr") > 1 and "not comparable:" in card
    assert all(f"dataset {d}" in card for d in datasets)    # each chapter's line names its data


@pytest.mark.browser
def test_every_committed_page_opens_in_a_browser_with_its_title_tables_and_images(committed_book):
    found = read_book(committed_book[1], SHOTS / "committed")
    opens_with_its_title_tables_and_images(found)
    assert set(found["intro-entries"]) == set(CHAPTERS)
    assert all(entry == found[f"book/runs/{c}.html"]["title"]
               for c, entry in found["intro-entries"].items())


@pytest.mark.notebook
@pytest.mark.browser
def test_every_page_of_a_book_run_now_reads_at_a_glance(smoke_book):
    found = read_book(smoke_book[1], SHOTS / "smoke")
    opens_with_its_title_tables_and_images(found)
    problems = reads_at_a_glance(found)
    assert not problems, "\n".join(problems)
    assert (SHOTS / "smoke" / "runs-comparison.png").stat().st_size > 10_000


def test_the_page_checks_catch_what_a_reader_would_stumble_on():
    clean = {"wide": [], "uncaptioned": 0, "cells": ["97.1", "—"], "headers": ["CA %"],
             "text": "A claim reads, ℓ∞ + FT, 2 × 3 and a * b.", "title": "T"}
    found = {path: dict(clean, title=f"T {path}") for path in PAGES}
    found["intro-entries"] = {c: f"T book/runs/{c}.html" for c in CHAPTERS}
    found["book/runs/clear.html"]["text"] = "ours: *delete\n+ FT* deletes"
    assert reads_at_a_glance(found) == [   # the stray emphasis and bullet of CLEAR's old page
        "book/runs/clear.html: a Markdown marker in the text: 'ours: *delete\\n+ FT* deletes'"] * 3
    bad = dict(clean, wide=["attack | CA %"], uncaptioned=2, cells=["nan", "1.0"],
               headers=["train_s"], text="see **this**")
    found = {path: dict(bad, title=f"T {path}") for path in PAGES}
    found["intro-entries"] = {"attacks": "The attacks"}
    problems = reads_at_a_glance(found)
    for kind in ("wider than the text column", "without a caption", "a cell reads 'nan'",
                 "a code name as a header: 'train_s'", "a Markdown marker",
                 "the introduction calls attacks 'The attacks'", "the introduction's table"):
        assert any(kind in p for p in problems), kind

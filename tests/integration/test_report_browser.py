"""The report as a reader sees it: `index.html` of a small run rendered by headless Chromium.

Checks, on a desktop window and on a narrow phone-sized one: no console errors, uncaught exceptions or
browser log errors; every image decodes with a non-zero size and is shown; the four question sections
are there; nothing sticks out sideways except inside a table's own scroll box. Screenshots are saved
under the test's temporary directory (pytest keeps the last runs' directories) for a person to look at.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .chromium import (
    IMAGES_JS,
    LAYOUT_JS,
    environment_note,
    file_url,
    find_chromium,
    new_page,
    open_browser,
)

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=environment_note())

VIEWPORTS = {"desktop": (1280, 900, False), "phone": (390, 844, True)}
QUESTIONS = ("Q1.", "Q2.", "Q3.", "Q4.")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    assert CHROMIUM is not None
    with open_browser(CHROMIUM, tmp_path_factory.mktemp("chromium") / "profile") as opened:
        yield opened


def _not_blank(png: Path) -> bool:
    pixels = np.asarray(Image.open(io.BytesIO(png.read_bytes())).convert("L"), dtype=np.float64)
    return pixels.size > 0 and float(pixels.std()) > 1.0


@pytest.mark.parametrize("viewport", sorted(VIEWPORTS))
def test_report_renders_cleanly(finished_store, browser, tmp_path: Path, viewport: str) -> None:
    runs, _ = finished_store
    width, height, mobile = VIEWPORTS[viewport]
    page = new_page(browser, width=width, height=height, mobile=mobile)
    page.open(file_url(runs / "report" / "index.html"))

    screenshot = page.screenshot(tmp_path / f"report-{viewport}.png", full_page=True)
    assert _not_blank(screenshot), screenshot
    assert page.errors() == [], f"{page.errors()} (screenshot: {screenshot})"

    images = page.evaluate(IMAGES_JS)
    assert images, "the report shows no figure"
    broken = [image for image in images if not image["ok"] or image["width"] <= 0 or image["height"] <= 0]
    assert broken == [], broken
    assert all(image["shown"] > 0 for image in images)
    assert all(image["shown"] <= width for image in images)  # figures shrink to the window

    titles = page.evaluate("Array.from(document.querySelectorAll('h2'), (h) => h.textContent)")
    for question in QUESTIONS:
        assert any(title.startswith(question) for title in titles), titles

    layout = page.evaluate(LAYOUT_JS)
    # The page is laid out at the window's width (a phone does not zoom out a 980 px desktop layout) ...
    assert layout["viewport"] == width, layout
    # ... and nothing but a table inside its own scroll box is wider than the window.
    assert layout["scroll"] <= layout["client"] and layout["offenders"] == [], f"{layout} ({screenshot})"


def test_the_checks_catch_a_broken_page(browser, tmp_path: Path) -> None:
    """The harness sees real failures: console errors, exceptions, undecodable images, overflow."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
        "<img alt='broken' src='data:image/png;base64,iVBORw0KGgoAAAAA'>"
        "<p style='white-space: nowrap'>" + "a_very_long_unbreakable_setting_name" * 20 + "</p>"
        "<script>console.error('planted console error'); throw new Error('planted exception');</script>"
        "</body></html>",
        encoding="utf-8",
    )
    page = new_page(browser, width=390, height=844, mobile=True)
    page.open(file_url(bad))
    errors = page.errors()
    assert any("planted console error" in error for error in errors), errors
    assert any("planted exception" in error for error in errors), errors
    images = page.evaluate(IMAGES_JS)
    assert [image["ok"] for image in images] == [False]
    layout = page.evaluate(LAYOUT_JS)
    assert layout["viewport"] != 390  # no viewport meta: laid out at the 980 px default and zoomed out
    assert layout["scroll"] > layout["client"] and any(o.startswith("p:") for o in layout["offenders"])

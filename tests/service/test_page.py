"""The web page in a real headless browser: Debian's chromium driven by Playwright's Python
package (never a browser of Playwright's own download)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .live import ALICE, ServiceProcess

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PHOTOS = sorted((Path(__file__).parents[2] / "examples" / "images").glob("*.jpg"))[:3]


def test_the_page_uploads_three_photos_and_shows_three_cutouts(
    service: ServiceProcess, tmp_path: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (.ci/run: apt-get install chromium)")
        pytest.skip("needs Debian's chromium: apt-get install -y chromium")
    assert len(PHOTOS) == 3
    problems: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page()
            page.on(
                "console",
                lambda message: (
                    problems.append(f"console {message.type}: {message.text}")
                    if message.type == "error"
                    else None
                ),
            )
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on(
                "requestfailed",
                lambda request: problems.append(f"request failed: {request.url} {request.failure}"),
            )
            page.goto(service.url + "/")
            page.wait_for_selector("#token-row:not([hidden])")  # the service wants a token
            page.fill("#token", ALICE)
            page.set_input_files("#files", [str(p) for p in PHOTOS])
            page.click("#start")
            page.wait_for_function(
                """() => {
                    const cutouts = [...document.querySelectorAll('img.cutout')];
                    return cutouts.length === 3
                        && cutouts.every((img) => img.complete && img.naturalWidth > 0);
                }""",
                timeout=120_000,
            )
            originals = page.eval_on_selector_all(
                "img.original", "imgs => imgs.map(i => i.naturalWidth)"
            )
            assert len(originals) == 3
            assert all(width > 0 for width in originals)
            states = page.eval_on_selector_all(".state", "els => els.map(e => e.textContent)")
            assert states == ["succeeded"] * 3
            page.wait_for_selector("#zip:not([hidden])")
            assert "3 succeeded" in page.text_content("#summary")
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        finally:
            browser.close()
    assert problems == []

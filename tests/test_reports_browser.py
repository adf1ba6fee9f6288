"""The HTML reports in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``, which
``make data`` installs as root) opens ``reports/index.html`` and a run page rendered from the smoke sweep and checks
the rendered DOM: the verdict matrix is there, every link resolves to a file, every figure loads."""
import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from conftest import ROOT

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER) and not os.environ.get("CI"),
    reason="Debian's chromium and chromium-driver are absent (make data installs them as root); CI requires them")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--allow-file-access-from-files"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def open_page(browser, path: Path) -> None:
    browser.get(path.resolve().as_uri())
    assert browser.execute_script("return document.readyState") == "complete"


def links_and_images(browser):
    """Every link's target (file:// URLs only: the page's own relative links) and every image's load state."""
    hrefs = browser.execute_script("return Array.from(document.querySelectorAll('a[href]'), a => a.href)")
    images = browser.execute_script("return Array.from(document.images, i => [i.src.slice(0, 60), i.complete, "
                                    "i.naturalWidth])")
    return [Path(unquote(urlparse(h).path)) for h in hrefs if h.startswith("file:")], images


def assert_page_is_whole(browser, page: Path):
    targets, images = links_and_images(browser)
    missing = [str(t) for t in targets if not t.is_file()]
    assert not missing, f"{page}: links to missing files: {missing[:5]}"
    broken = [src for src, complete, width in images if not (complete and width > 0)]
    assert not broken, f"{page}: images that did not load: {broken[:5]}"
    text = browser.execute_script("return document.documentElement.outerHTML")
    for prefix in ("/work/", "/tmp/", "/home/", "/root/"):
        assert prefix not in text.replace(str(ROOT), ""), f"{page} names an absolute path under {prefix}"
    return targets, images


def test_the_committed_index_shows_the_verdict_matrix_and_every_link_resolves(browser):
    index = ROOT / "reports" / "index.html"
    open_page(browser, index)
    assert browser.title == "nmtune-study · reports"
    headers = browser.execute_script("return Array.from(document.querySelectorAll('table tr:first-child th'), "
                                     "th => th.textContent)")
    for name in ("default", "converged", "asymmetric", "instance", "fine", "clip"):
        assert name in headers, f"the verdict matrix lacks the {name} set"
    verdicts = browser.execute_script("return Array.from(document.querySelectorAll('td.supported, td.contradicted, "
                                      "td.inconclusive'), td => td.className)")
    assert len(verdicts) >= 2 * 6 * 10  # two protocols × six sets × the paper's claims
    targets, _ = assert_page_is_whole(browser, index)
    set_indexes = [t for t in targets if t.name == "index.html"]
    assert len(set_indexes) >= 6
    open_page(browser, set_indexes[0])  # a set's own index: its figures load and its links resolve
    assert_page_is_whole(browser, set_indexes[0])
    assert browser.execute_script("return document.querySelectorAll('img').length") > 0


def test_a_run_page_of_the_smoke_sweep_has_its_title_links_and_figures(browser, smoke_sweep, tmp_path):
    from nmtune_lib.study.report import report
    from nmtune_lib.run import Study

    out = tmp_path / "reports"
    out.mkdir()
    (out / "README.md").write_text("findings\n")  # the index links the findings beside it
    report(Study.from_parameters("smoke", run_root=str(smoke_sweep)), out)
    page = out / "smoke" / "symmetric-0.20_seed0_03_spectrum.html"
    open_page(browser, page)
    assert browser.title == "smoke · symmetric 20 % noise · seed 0 · 03 spectrum"
    targets, images = assert_page_is_whole(browser, page)
    assert {t.name for t in targets} >= {"index.html"} and len(images) >= 2  # the spectrum figures
    folded = browser.execute_script("return Array.from(document.querySelectorAll('details > summary'), "
                                    "s => s.textContent)")
    assert "resolved configuration" in folded
    open_page(browser, out / "smoke" / "index.html")
    assert_page_is_whole(browser, out / "smoke" / "index.html")

"""Every page a reader opens, in a real browser (headless Chromium through selenium): each image
loads, the console has no error, and a reader study answered by clicking downloads a CSV that
``diffice reader-score`` scores. Pages are built from the fake run folders of the other report
tests (no model). Skipped, with the reason, where selenium, chromium or chromedriver is absent
(``.ci/run`` installs Debian's chromium and chromium-driver; ``make install`` installs selenium).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import time
from pathlib import Path

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (make install installs it)")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

from diffice.cli import main  # noqa: E402
from tests._fake_run import fake_eval_nets, make_fake_run  # noqa: E402
from tests.test_reader_synthesis import make_synthesis_run  # noqa: E402

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no headless browser: install chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium for the module, its console kept (``get_log('browser')``)."""
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-extensions", "--no-first-run", "--window-size=1280,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    opts.add_experimental_option("prefs", {"download.prompt_for_download": False})
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)  # a given driver: selenium-manager stays idle
    try:
        driver = webdriver.Chrome(options=opts, service=service)
    except WebDriverException as err:
        pytest.fail(f"chromium ({CHROMIUM}) did not start under {CHROMEDRIVER}: {err.msg}")
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def page_problems(driver, page: Path) -> list[str]:
    """Open ``page`` and return what is wrong with it: every image that did not load (not
    complete, or no natural width) and every console entry of level SEVERE (uncaught JS errors,
    resources that failed to load). An empty list: the page is fine."""
    driver.get_log("browser")  # drop what earlier pages left
    driver.get(page.resolve().as_uri())
    deadline = time.monotonic() + 10
    while driver.execute_script("return document.readyState") != "complete" and time.monotonic() < deadline:
        time.sleep(0.05)
    images = driver.execute_script(
        "return Array.from(document.images).map((im, i) => [i, (im.getAttribute('src') || '').slice(0, 40), im.alt,"
        " im.complete, im.naturalWidth]);")
    problems = [f"image {i} ({alt!r}, src {src!r}) did not load" for i, src, alt, complete, width in images
                if not (complete and width > 0)]
    problems += [f"console {e['level']}: {e['message']}" for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return problems


def n_images(driver) -> int:
    return driver.execute_script("return document.images.length;")


# ----------------------------------------------------------------------------- the pages


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    """A counterfactual run's report.html and reader-study.html, a synthesis run's report.html and
    its two reader-study pages (single frames; pairs of edited frames)."""
    from diffice.report import finalize_run
    from diffice.report.reader import PAGE_NAME, make_study
    from diffice.report.reader_synthesis import make_synthesis_study, page_name
    from diffice.synthesis.report import write_report

    root = tmp_path_factory.mktemp("pages")
    cf = make_fake_run(root / "runs" / "demo" / "counterfactuals", n=6, iterations=2)
    finalize_run(cf, nets=fake_eval_nets(), log_wandb=False, progress=False, frames=3)
    make_study(cf, pairs=10, seed=1)

    syn = make_synthesis_run(root / "runs" / "demo" / "synthesis", layouts=4, samples=2, edits=(1, 2, 1, 1),
                             anomalies=("absent_csp", "big_th"))
    layouts = [json.loads(p.read_text()) for p in sorted(syn.glob("layouts/*/record.json"))]
    edits = [{**json.loads(p.read_text()), "psnr_outside": 35.0, "ssim_outside": 0.97, "repaint": True}
             for p in sorted(syn.glob("edits/*/record.json"))]
    metrics = {"ckpt": "models/demo/synthesis.ckpt", "trained_steps": 10, "samples": 8, "layouts": 4,
               "dice": {"head": 0.9}, "kid": 0.05, "kid_std": 0.01, "edits": len(edits)}
    write_report(syn, metrics, layouts, edits, ["background", "head"])
    make_synthesis_study(syn, count=6, seed=1)
    make_synthesis_study(syn, task="edited", count=4, seed=1)
    return {"report": cf / "report.html", "reader-study": cf / PAGE_NAME,
            "synthesis report": syn / "report.html",
            "synthesis reader-study real-vs-synthetic": syn / page_name("real-vs-synthetic"),
            "synthesis reader-study edited": syn / page_name("edited")}


@pytest.mark.parametrize("name", ["report", "reader-study", "synthesis report",
                                  "synthesis reader-study real-vs-synthetic", "synthesis reader-study edited"])
def test_page_loads_every_image_without_console_errors(browser, pages, name):
    assert page_problems(browser, pages[name]) == []
    assert n_images(browser) >= 4  # the check looked at the page's pictures, not at an empty page


def test_a_broken_page_is_caught(browser, pages, tmp_path):
    """The checker fails a page with an image whose file is missing, and one with a script error."""
    page = pages["synthesis report"].read_text()
    no_image = tmp_path / "no-image.html"
    no_image.write_text(re.sub(r'src="data:image/png;base64,[^"]*"', 'src="frames/missing.png"', page, count=1))
    js_error = tmp_path / "js-error.html"
    js_error.write_text(page.replace("</body>", "<script>throw new Error('deliberately broken page')</script></body>"))
    missing = page_problems(browser, no_image)
    assert any("image 0" in p and "frames/missing.png" in p for p in missing), missing
    assert any("missing.png" in p and p.startswith("console SEVERE") for p in missing), missing  # net::ERR_FILE_NOT_FOUND
    thrown = page_problems(browser, js_error)
    assert len(thrown) == 1 and "deliberately broken page" in thrown[0], thrown
    assert page_problems(browser, pages["synthesis report"]) == []  # and the page itself is fine


# ----------------------------------------------------------------------------- a reader answers


def _answer_by_clicking(driver, unit: str, entries: list[dict], options: list[str]) -> int:
    """Click one option in every block: the right answer in odd-numbered blocks, another one in
    even ones; return the number of right answers."""
    right = 0
    for e in entries:
        n, answer = e[unit], e.get("answer", e.get("cf_side"))
        choice = answer if n % 2 else next(o for o in options if o != answer)
        right += choice == answer
        radio = driver.find_element(By.CSS_SELECTOR, f'.{unit}[data-{unit}="{n}"] input[value="{choice}"]')
        radio.find_element(By.XPATH, "./ancestor::label").click()  # the reader clicks the image (pairs) or the option
        assert radio.is_selected(), (n, choice)
    return right


def _downloaded(folder: Path, name: str, timeout: float = 15) -> Path:
    path = folder / name
    deadline = time.monotonic() + timeout
    while not path.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.is_file(), f"no {name} downloaded into {folder}: {sorted(p.name for p in folder.iterdir())}"
    return path


@pytest.mark.parametrize("name, key_name", [
    ("reader-study", ".reader-study-key.json"),
    ("synthesis reader-study real-vs-synthetic", ".reader-study-real-vs-synthetic-key.json"),
    ("synthesis reader-study edited", ".reader-study-edited-key.json"),
])
def test_reader_answers_every_block_and_the_download_scores(browser, pages, name, key_name, tmp_path):
    page = pages[name]
    key = json.loads((page.parent / key_name).read_text())
    unit = key.get("unit", "pair")
    entries = key[unit + "s"]
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
    assert page_problems(browser, page) == []
    right = _answer_by_clicking(browser, unit, entries, key.get("options", ["A", "B"]))
    assert browser.find_element(By.ID, "count").text == f"{len(entries)} of {len(entries)} answered"
    browser.find_element(By.ID, "reader").send_keys("Dr Browser")
    browser.find_element(By.XPATH, "//button[contains(., 'Download answers')]").click()  # all answered: no confirm
    csv = _downloaded(tmp_path, f"reader-answers-{key['study']}.csv")
    assert [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []  # clicks and download

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["reader-score", str(page.parent), str(csv), "--json"]) == 0
    s = json.loads(out.getvalue())
    assert s["study"] == key["study"] and s["readers"] == ["Dr Browser"] and s["answered"] == len(entries)
    assert s["preferred_cf" if "task" not in s else "correct"] == right
    assert 0 < right < len(entries)

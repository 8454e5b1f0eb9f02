"""`attngan serve` as a user runs it, a server process on 127.0.0.1: a load test (200 requests
from 16 concurrent clients, every one answered, none lost, the server's memory flat) and the
page in a real browser, Debian's headless Chromium (type a caption, see its unknown word
marked, generate, hover and tap a word to see its maps; no horizontal scrolling on a phone's
width).

Run as a script, it takes the screenshot of the README from a run of your choice:
    python tests/test_serve_live.py --ckpt demo/gan --screenshot docs/serve_page.png
"""

import argparse
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_serve import (  # noqa: E402
    peak_rss_bytes,
    post,
    rss_bytes,
    run_load,
    start_server,
    summary,
)
from test_gan_training import single_thread, train_tiny_gan  # noqa: E402, F401 (autouse)

CAPTION = "a small red circle at the top left"
TYPED = "a small red zebra circle at the top left"  # "zebra" is not in the vocabulary
LOAD_REQUESTS, LOAD_CLIENTS, LOAD_IMAGES = 200, 16, 8
# The server's RSS may grow this much between the 50th and the 200th answer: allocator noise.
# Keeping each request's images and maps (a leak) would grow it by over 20 MB.
RSS_GROWTH_BOUND = 8 * 2**20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve_live")
    run, _ = train_tiny_gan(folder)
    process, url = start_server(run, log=folder / "server.log", env={"OMP_NUM_THREADS": "1"})
    yield process, url
    process.terminate()
    process.wait(30)


def test_200_requests_from_16_clients_are_all_answered_and_memory_stays_flat(server):
    process, url = server
    for seed in range(3):  # warm-up
        assert (
            post(url, "/api/generate", {"caption": CAPTION, "n": LOAD_IMAGES, "seed": seed})[0]
            == 200
        )
    answers = run_load(
        url,
        LOAD_REQUESTS,
        LOAD_CLIENTS,
        lambda index: {"caption": CAPTION, "n": LOAD_IMAGES, "seed": index},
        pid=process.pid,
    )
    assert len(answers) == LOAD_REQUESTS
    assert sorted(a["index"] for a in answers) == list(range(LOAD_REQUESTS))
    lost = [a for a in answers if a["status"] not in (200, 503)]
    assert not lost, lost[:3]
    assert any(a["status"] == 200 for a in answers)
    assert all(int(a["retry_after"]) >= 1 for a in answers if a["status"] == 503)
    growth = answers[-1]["rss"] - answers[49]["rss"]
    print(
        f"\n{summary(answers)}; server RSS {answers[49]['rss'] / 2**20:.1f} MB after 50 "
        f"answers, {answers[-1]['rss'] / 2**20:.1f} MB after {LOAD_REQUESTS}, peak "
        f"{peak_rss_bytes(process.pid) / 2**20:.1f} MB"
    )
    assert growth < RSS_GROWTH_BOUND, f"RSS grew {growth / 2**20:.1f} MB over 150 requests"
    assert rss_bytes(process.pid) > 0 and process.poll() is None  # still serving


def chromium_or_reason():
    """(chromium, chromedriver) paths, or (None, why the browser test cannot run here)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None, "selenium is not installed (make test installs it)"
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        return None, (
            "Debian's chromium and chromium-driver are not installed (.ci/run installs "
            "them as root: apt-get install chromium chromium-driver)"
        )
    return (chromium, driver), None


def open_browser(chromium: str, driver: str, width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def drive_page(browser, url: str, images: int) -> dict:
    """Type TYPED, generate `images` images, hover "red" then "circle", leave, tap "red"; check
    what the page shows at each step. Returns what it saw."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(url + "/")
    wait.until(lambda b: "step" in b.find_element(By.ID, "run").text)
    sizes = browser.execute_script("return info.image_sizes")
    browser.find_element(By.ID, "caption").send_keys(TYPED)
    # the unknown word is marked before anything is generated
    unknown = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#tokens .chip.unknown"))
    assert [chip.get_attribute("data-word") for chip in unknown] == ["zebra"]
    assert "left out: zebra" in browser.find_element(By.ID, "reading-note").text
    assert not browser.find_elements(By.CSS_SELECTOR, "#stages img")
    count = browser.find_element(By.ID, "n")
    count.clear()
    count.send_keys(str(images))
    browser.find_element(By.ID, "generate").click()
    wait.until(
        lambda b: (
            len(b.find_elements(By.CSS_SELECTOR, "#stages img.image")) == images * len(sizes)
            and b.execute_script(
                "return [...document.querySelectorAll('#stages img.image')]"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
        )
    )
    status = browser.find_element(By.ID, "status").text
    assert f"{images} images in " in status and "left out: zebra" in status, status
    natural = browser.execute_script(
        "return [...document.querySelectorAll('section.stage')]"
        ".map(s => s.querySelector('img.image').naturalWidth)"
    )
    assert natural == sizes  # every stage at the run's size
    words = {
        button.text: button for button in browser.find_elements(By.CSS_SELECTOR, "#words button")
    }
    assert list(words) == CAPTION.split()

    def shown_maps():
        """Per stage, the sources of the maps shown over its images (None: hidden)."""
        return browser.execute_script(
            "return [...document.querySelectorAll('section.stage')].map(s => "
            "[...s.querySelectorAll('img.heat')].map(h => "
            "getComputedStyle(h).display !== 'none' && h.complete && h.naturalWidth > 0 "
            "? h.src : null))"
        )

    def expected(word):
        index = CAPTION.split().index(word)
        return browser.execute_script(
            "return current.stages.map(s => s.attention ? s.attention.map(m => m[arguments[0]])"
            " : s.images.map(() => null))",
            index,
        )

    hidden = [[None] * images for _ in sizes]
    assert shown_maps() == hidden
    for word in ("red", "circle"):
        ActionChains(browser).move_to_element(words[word]).perform()
        wait.until(lambda b, word=word: shown_maps() == expected(word))
        assert all(
            src.startswith("data:image/png;base64,") for stage in shown_maps()[1:] for src in stage
        )
    ActionChains(browser).move_to_element(browser.find_element(By.TAG_NAME, "h1")).perform()
    wait.until(lambda b: shown_maps() == hidden)
    words["red"].click()  # a tap keeps the word's maps shown
    ActionChains(browser).move_to_element(browser.find_element(By.TAG_NAME, "h1")).perform()
    wait.until(lambda b: shown_maps() == expected("red"))
    return {"sizes": sizes, "status": status}


def test_the_page_in_headless_chromium(server, tmp_path):
    process, url = server
    paths, reason = chromium_or_reason()
    if paths is None:
        pytest.skip(reason)
    browser = open_browser(*paths, width=1100, height=900)
    try:
        drive_page(browser, url, images=3)
        assert browser.save_screenshot(str(tmp_path / "page.png"))
        browser.set_window_size(390, 844)  # a phone's width: nothing off-screen
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth"
        )
        assert overflow <= 0, f"the page is {overflow} px wider than a phone's screen"
    finally:
        browser.quit()


def main() -> int:
    parser = argparse.ArgumentParser(description="The page's screenshot for the README.")
    parser.add_argument("--ckpt", required=True, help="GAN run folder or checkpoint")
    parser.add_argument("--screenshot", required=True, help="PNG to write")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--width", type=int, default=1000)
    args = parser.parse_args()
    paths, reason = chromium_or_reason()
    if paths is None:
        print(reason, file=sys.stderr)
        return 2
    process, url = start_server(args.ckpt)
    browser = open_browser(*paths, width=args.width, height=900)
    try:
        drive_page(browser, url, images=args.images)
        height = browser.execute_script(
            "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight"
        )
        browser.set_window_size(args.width, height)  # the whole page
        browser.save_screenshot(args.screenshot)
    finally:
        browser.quit()
        process.terminate()
        process.wait(30)
    print(f"screenshot written to {args.screenshot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

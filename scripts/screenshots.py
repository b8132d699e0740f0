"""The README's screenshots of report.html and the review page, taken with Debian's chromium.

    python scripts/screenshots.py --report RUN/report.html --review FOLDER --model NAME [--tag TAG] [--out docs]

Use the folders bench/review_loop.py leaves (TAGGER_HOME=WORKDIR/home for its models):
    TAGGER_HOME=build/review-loop/home python scripts/screenshots.py \\
        --report build/review-loop/run1/report.html --review build/review-loop/photos/train --model loop1
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def browser(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}",
                "--hide-scrollbars"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--review", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--tag", default="tent")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()

    driver = browser(1280, 1500)
    try:
        driver.get(args.report.resolve().as_uri())
        driver.save_screenshot(str(args.out / "report.png"))
        # The tag's thumbnails: its hits, false alarms and misses (where wrong labels show).
        driver.set_window_size(1280, 520)
        driver.execute_script("document.querySelector(`tr[data-tag='${arguments[0]}'] a`).click()", args.tag)
        time.sleep(0.5)
        driver.save_screenshot(str(args.out / "report-photos.png"))
    finally:
        driver.quit()

    proc = subprocess.Popen([sys.executable, "-m", "tagger", "review", str(args.review), "--model", args.model,
                             "--no-browser"], stdout=subprocess.PIPE, text=True)
    driver = browser(1280, 860)
    try:
        url = proc.stdout.readline().strip()
        driver.get(url)
        time.sleep(1)
        for _ in range(40):
            title = driver.execute_script("return document.getElementById('tag-title').textContent")
            if title == args.tag:
                break
            driver.execute_script("document.dispatchEvent(new KeyboardEvent('keydown', {key: ']'}))")
        time.sleep(1.5)  # thumbnails
        driver.save_screenshot(str(args.out / "review.png"))
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(timeout=10)
    print(f"wrote {args.out / 'report.png'}, {args.out / 'report-photos.png'}, {args.out / 'review.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The README's picture of the web page (docs/serve-page.png): `recog serve RUN` on a loopback port,
one real image uploaded in headless Chromium (Playwright with the Debian `chromium`), the page
photographed once the bars and the explanation are there.

    python benchmarks/serve_screenshot.py RUN IMAGE [--out docs/serve-page.png]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import urllib.request

from serve_load import free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("image")
    parser.add_argument("--out", default="docs/serve-page.png")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "recog", "serve", args.run, "--port", str(port)])
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 820, "height": 640})
            page.goto(url)
            page.set_input_files("#file", args.image)
            page.wait_for_selector("#heatmap", state="visible")
            page.screenshot(path=args.out, full_page=True)
            browser.close()
        print(f"wrote {args.out}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()

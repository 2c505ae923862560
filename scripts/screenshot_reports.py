"""Screenshots of the backtest and training reports for the docs (docs/img/*.png), taken with headless Chromium.

After ``qlib-crypto demo`` (from the repository root)::

    python scripts/screenshot_reports.py                      # reports/ -> docs/img/
    python scripts/screenshot_reports.py --backtest DIR/report.html --training DIR/training_report.html

Uses Debian's ``/usr/bin/chromium`` (``--chromium`` to change) through Playwright, with a fresh profile and no
network; waits until every plotly figure is drawn, then captures the top ``--height`` pixels of the page.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
DRAWN = """() => Array.from(document.querySelectorAll('.plotly-graph-div')).every(
    d => d._fullLayout && d.querySelector('svg.main-svg') && d.querySelectorAll('.trace, .hm').length >= d.data.length)"""


def shoot(pages: dict[Path, Path], chromium: str, width: int, height: int) -> None:
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="qlib_crypto_shots_")
    try:
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                profile, executable_path=chromium, headless=True, args=ARGS, viewport={"width": width, "height": height}
            )
            for src, out in pages.items():
                page = ctx.new_page()
                page.route(
                    "**/*",
                    lambda r: r.continue_() if r.request.url.startswith(("file:", "data:", "about:")) else r.abort(),
                )
                page.goto(src.resolve().as_uri(), wait_until="load")
                page.wait_for_function(DRAWN, timeout=120_000)
                page.wait_for_timeout(500)
                out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out), clip={"x": 0, "y": 0, "width": width, "height": height})
                print(f"{src} -> {out}")
                page.close()
            ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backtest", type=Path, default=Path("reports/latest/backtest_60min/report.html"))
    ap.add_argument("--training", type=Path, default=Path("reports/training_60min/training_report.html"))
    ap.add_argument("--out-dir", type=Path, default=Path("docs/img"))
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=2400)
    args = ap.parse_args(argv)
    pages = {args.backtest: args.out_dir / "backtest_report.png", args.training: args.out_dir / "training_report.png"}
    missing = [str(p) for p in pages if not p.is_file()]
    if missing:
        print(f"error: no report at {', '.join(missing)} (run `qlib-crypto demo` first)", file=sys.stderr)
        return 2
    shoot(pages, args.chromium, args.width, args.height)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Refresh docs/app.png: run the app, open the example in Chromium, save a screenshot.

Usage: .venv/bin/python scripts/screenshot_app.py [--out docs/app.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from test_app_browser import app_url, screenshot_example  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(REPO / "docs" / "app.png"))
    args = parser.parse_args()
    gen = app_url.__wrapped__()  # the fixture's generator: start streamlit
    url = next(gen)
    try:
        info = screenshot_example(url, Path(args.out))
        print(f"saved {args.out}; metrics: {info['metrics']}; first estimate after {info['seconds_to_first_estimate']:.1f} s")
    finally:
        next(gen, None)


if __name__ == "__main__":
    main()

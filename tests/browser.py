"""Pages in a real headless Chromium: Debian's chromium driven by Playwright (CI installs both, .ci/run). The
browser is launched as CHROMIUM with LAUNCH_ARGS; the test machine has no internet, so a page that needs one shows
it by a failed or foreign request."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox"]

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - CI installs it (.ci/run); a developer without it skips
    sync_playwright = None  # type: ignore[assignment]
    expect = None  # type: ignore[assignment]

needs_browser = pytest.mark.skipif(
    (sync_playwright is None or not Path(CHROMIUM).exists()) and not os.environ.get("CI"),
    reason="needs playwright and Debian's chromium (apt-get install -y chromium); CI installs both",
)

__all__ = ["CHROMIUM", "LAUNCH_ARGS", "expect", "needs_browser", "sync_playwright"]

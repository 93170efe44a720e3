"""A real headless Chromium for the browser tests: Debian's (scripts/chromium.sh installs it), driven
by Playwright, which downloads no browser of its own here. Screenshots are kept as test artifacts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Where the screenshots go: ARX_TEST_ARTIFACTS, or test-artifacts/ in the checkout (ignored by git).
ARTIFACTS = Path(os.environ.get("ARX_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "ui"
VIEWPORT = {"width": 1280, "height": 900}


def missing(reason: str):
    """Skip where the browser cannot be had; under CI, where scripts/test.sh installs it, fail instead."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (under CI, scripts/test.sh installs it)")
    pytest.skip(reason)


def chromium() -> str:
    path = os.environ.get("ARX_CHROMIUM") or shutil.which("chromium")
    if not path:
        missing("no headless Chromium: scripts/chromium.sh installs Debian's chromium as root (apt-get install"
                " chromium), or name one in ARX_CHROMIUM")
    return path


def launch(playwright):
    """A headless Chromium of this machine's, as a Playwright browser."""
    return playwright.chromium.launch(executable_path=chromium())


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    return path

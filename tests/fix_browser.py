"""Headless Chromium for what people look at (Debian's `chromium`; `.ci/run` installs it).

Started the way this machine's network requires: no background networking, no component
updates, a fresh profile each time (as root, without the sandbox).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "chromium not found: install Debian's `chromium` package (.ci/run does)"
    return path


def _run(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args,
                           page.resolve().as_uri()], capture_output=True, text=True,
                          timeout=120, check=True)


def dump_dom(page: Path, profile: Path) -> str:
    """The DOM Chromium built from ``page``, serialised."""
    return _run(page, profile, "--dump-dom").stdout


def screenshot(page: Path, profile: Path, out: Path, size: str = "1100,1400") -> tuple[int, int]:
    """A PNG of ``page`` as Chromium renders it; returns its (width, height)."""
    _run(page, profile, f"--window-size={size}", f"--screenshot={out}")
    head = out.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height

"""The browser the review page's tests drive: Debian's Chromium through Playwright,
in a closed network (no background connections, no sandbox as root)."""

from __future__ import annotations

import os

CHROMIUM = os.environ.get("AUTOLABEL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [  # a closed network: no background connections, no sandbox as root
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

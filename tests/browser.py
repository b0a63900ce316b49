"""Headless Chromium (Debian's ``chromium``) for tests of the web UIs we serve on 127.0.0.1: a page's text
after its scripts ran, and a screenshot plus the DOM kept when what a test expects is not on the page.

Installed by the test set-up with apt-get when missing, as the node's packages are (lmops.cluster.node).
Chromium's own background traffic (updates, safe browsing, metrics) is switched off, and every request but
loopback goes to a proxy address where nothing listens: a page can only reach 127.0.0.1.
"""

from __future__ import annotations

import html.parser
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("LMOPS_TEST_ARTIFACTS") or REPO / ".state" / "test-artifacts")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-domain-reliability", "--disable-client-side-phishing-detection",
         "--proxy-server=http://127.0.0.1:9", "--window-size=1400,1600", "--hide-scrollbars"]


def ensure_chromium() -> str:
    """The chromium binary; apt-get installs Debian's package first when it is missing (about 30 s)."""
    found = shutil.which("chromium")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    out = subprocess.run(install, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if out.returncode != 0:  # package lists never fetched on this machine: fetch them, try again
        subprocess.run([*sudo, "apt-get", "update", "-q"], capture_output=True, env=env, stdin=subprocess.DEVNULL)
        out = subprocess.run(install, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    found = shutil.which("chromium")
    if out.returncode != 0 or not found:
        raise RuntimeError(f"the browser tests need Debian's chromium: `{' '.join(install)}` failed: "
                           f"{out.stderr.strip()[-500:]}")
    return found


def _chromium(url: str, *extra: str, timeout: float = 90) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="lmops-chromium-") as profile:
        return subprocess.run([ensure_chromium(), *FLAGS, f"--user-data-dir={profile}", *extra, url],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def page_text(url: str, budget_ms: int = 15000) -> tuple[str, str]:
    """(visible text, DOM) of ``url`` once its scripts had ``budget_ms`` of virtual time (network waits excluded)."""
    dom = _chromium(url, f"--virtual-time-budget={budget_ms}", "--dump-dom").stdout
    parser = _Text()
    parser.feed(dom)
    return " ".join(parser.parts), dom


def assert_page_shows(url: str, expected: list[str], name: str, timeout: float = 90) -> str:
    """The page's text once every expected string is on it (a UI still loading gets a few tries); else an
    AssertionError naming what is missing, with a screenshot and the DOM kept under ARTIFACTS/name.*."""
    deadline = time.monotonic() + timeout
    while True:
        text, dom = page_text(url)
        missing = [s for s in expected if s not in text]
        if not missing:
            return text
        if time.monotonic() > deadline:
            break
        time.sleep(2)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"{name}.png"
    _chromium(url, "--virtual-time-budget=15000", f"--screenshot={shot}")
    (ARTIFACTS / f"{name}.html").write_text(dom)
    raise AssertionError(f"{url} does not show {missing} (screenshot {shot}, DOM {shot.with_suffix('.html')});"
                         f" its text: {text[:1500]}")


class _Text(html.parser.HTMLParser):
    """The text a person sees: no scripts or styles."""

    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag, attrs):
        self._hidden += tag in ("script", "style", "noscript")

    def handle_endtag(self, tag):
        self._hidden -= tag in ("script", "style", "noscript") and self._hidden > 0

    def handle_data(self, data):
        if not self._hidden and data.strip():
            self.parts.append(data.strip())

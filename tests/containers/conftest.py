"""The lmops image for the container tests: built once per session through ``make images``' own code, and
skipped when an image with the same build key (lock + Dockerfile + sources) is already in the engine.

Cold on a fresh 2-core machine: podman's install (~15 s), the Debian base (mmdebstrap, 1-2 min), the image
(4 min); cached: a second or two. The engine's storage (/var/lib/containers) is outside the checkout."""

from __future__ import annotations

import time

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/containers/" in str(item.fspath) and "test_dockerfile" not in str(item.fspath):
            item.add_marker(pytest.mark.containers)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def engine():
    from lmops.images.engine import detect

    return detect(install=True)


@pytest.fixture(scope="session")
def lmops_image(engine) -> str:
    from lmops.images.build import build

    started = time.time()
    built = build("cpu", engine=engine, log=lambda line: None)
    print(f"\n[containers] {built.line()} ({time.time() - started:.0f}s here)")
    return built.ref

"""The container tests (marked ``containers``: `make test-containers`). The lmops image fixtures (``engine``,
``lmops_image``, ``node_image``) are the session's, in tests/conftest.py: `make test` needs the image too, for the
InferenceServices' predictor pods."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/containers/" in str(item.fspath) and "test_dockerfile" not in str(item.fspath):
            item.add_marker(pytest.mark.containers)
            item.add_marker(pytest.mark.slow)

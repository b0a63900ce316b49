"""The binaries' build: cached by version and recipe, and a failed step is named with its fix."""

from __future__ import annotations

import pytest

from lmops.cluster import binaries


def test_the_cache_key_follows_the_version_and_the_recipe(monkeypatch, tmp_path):
    monkeypatch.setenv("LMOPS_CACHE_DIR", str(tmp_path))
    key = binaries.build_dir()
    assert key.parent == tmp_path and key.name.startswith(f"kubernetes-{binaries.K8S_VERSION}-")
    monkeypatch.setattr(binaries, "K8S_DEB_VERSION", "1.20.5+really1.20.2-1.1+deb12u2")
    assert binaries.build_dir() != key
    assert binaries.find() is None  # nothing built under this key


@pytest.mark.slow
def test_a_failed_step_is_named_with_its_fix(monkeypatch, tmp_path):
    """A source version the archive does not have: the recipe stops at `apt-get source` and says so."""
    # the real build first (cached: instant after `make k8s-binaries`), so that the recipe's steps before
    # `apt-get source` (deb-src, the build's packages) are done and the failure is the version's alone
    binaries.ensure(lambda line: None)
    monkeypatch.setenv("LMOPS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(binaries, "K8S_DEB_VERSION", "0.0.0-not-in-debian")
    lines: list[str] = []
    with pytest.raises(binaries.BuildError, match=r"failed at step 'apt-get source kubernetes=0.0.0-not-in-debian':"
                                                  r" apt-get failed \(see .*apt.log\)"):
        binaries.ensure(lines.append)
    assert any("== step 3/11: apt-get source" in line for line in lines)
    assert not (binaries.build_dir() / "bin").exists()  # nothing half-built is trusted

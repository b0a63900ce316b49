"""KServe's storage-initializer step from the lmops image (``python -m lmops.serve.storage_initializer SRC DEST``):
a model folder from moto S3 or a local folder into the destination, and a missing model as exit status 1 with
the URI on stderr (what the kubelet keeps as the init container's termination message)."""

from __future__ import annotations

import os
import subprocess
import sys


def _run(src: str, dest) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmops.serve.storage_initializer", src, str(dest)],
                          capture_output=True, text=True, env=dict(os.environ), timeout=120)


def test_fetches_s3_and_local_folders_and_names_a_missing_model(s3, tiny_model_dir, tmp_path):
    from lmops import storage

    _, bucket = s3
    storage.upload_dir(tiny_model_dir, f"s3://{bucket}/m")
    expected = sorted(p.relative_to(tiny_model_dir).as_posix() for p in tiny_model_dir.rglob("*") if p.is_file())
    for src, dest in ((f"s3://{bucket}/m", tmp_path / "from-s3"), (str(tiny_model_dir), tmp_path / "from-dir")):
        out = _run(src, dest)
        assert out.returncode == 0, out.stderr
        assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == expected
        assert f"{len(expected)} files from {src}" in out.stdout

    for missing in (f"s3://{bucket}/missing", str(tmp_path / "missing")):
        out = _run(missing, tmp_path / "none")
        assert out.returncode == 1 and out.stderr.startswith("storage-initializer: ") and missing in out.stderr, out.stderr

"""KServe's storage initializer, from the lmops image: ``python -m lmops.serve.storage_initializer SRC DEST``.

KServe injects an init container named ``storage-initializer`` into a predictor pod whose storage URI it
knows (``storageUri``, or a custom container's STORAGE_URI env), with args ``[SRC, /mnt/models]`` and the
emptyDir ``kserve-provision-location`` mounted at /mnt/models; the predictor then reads the model from
there. KServe's own image does this with its Python ``Storage.download``; this is the same step for the
URIs lmops writes: ``s3://`` (credentials and endpoint from the environment, as lmops.storage reads them:
AWS_* and LMOPS_S3_ENDPOINT_URL / AWS_ENDPOINT_URL) and a local folder (a hostPath on a one-machine
cluster). The exit status and the last line on stderr say what went wrong: the kubelet keeps them as the
init container's termination message, which is how a missing model reaches the InferenceService status.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from lmops import storage


def fetch(src: str, dest: str | Path) -> int:
    """Copy the model at ``src`` into ``dest`` (an existing, empty-ish folder); returns the files copied."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if storage.is_s3(src):
        storage.download_dir(src, dest)
    else:
        path = Path(src.removeprefix("file://"))
        if not path.is_dir():
            raise storage.StorageError(f"{src}: model folder not found")
        shutil.copytree(path, dest, dirs_exist_ok=True)
    copied = sum(1 for p in dest.rglob("*") if p.is_file())
    if copied == 0:
        raise storage.StorageError(f"{src}: no model files there")
    return copied


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m lmops.serve.storage_initializer SRC_URI DEST_DIR", file=sys.stderr)
        return 2
    src, dest = args
    try:
        copied = fetch(src, dest)
    except storage.StorageError as e:
        print(f"storage-initializer: {e}", file=sys.stderr)
        return 1
    print(f"storage-initializer: {copied} files from {src} in {dest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Image and container-run benchmark: the lmops image's build time (cold and cached) and size, and
`make run RUNNER=container` against `make run` (ratio of wall times, cold and cached).

    python bench/images.py [--cold] [--cuda] [--preset micro|tiny] [--skip-runs]

- cold build: --cold rebuilds the CPU image without the layer cache (--no-cache) and makes a fresh Debian
  base (mmdebstrap into a throw-away tag); the engine install (~15 s) is not included.
- cached build: a second `make images` with nothing changed (the build key matches: no engine build).
- runs: each runner in a fresh state folder (cold: its own MLflow, Ray for subprocess, no stage cache), then
  again in the same folder (cached: every stage before register served by lmops' stage cache). The
  `micro` preset is the tests' micro config (seconds per stage); `tiny` is `make run`'s.

Wall clock on 2 shared cores: other people's work counts too; the figures vary run to run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cold", action="store_true", help="also time a cold build (no layer cache, a fresh base)")
    p.add_argument("--cuda", action="store_true", help="also build the CUDA image (several GB from PyPI)")
    p.add_argument("--preset", choices=["micro", "tiny"], default="micro")
    p.add_argument("--skip-runs", action="store_true", help="images only")
    args = p.parse_args()

    from lmops.images import base, build
    from lmops.images.engine import detect

    quiet = lambda line: None  # noqa: E731
    engine = detect(install=True)
    print(f"engine: {engine.name}")
    if args.cold:
        t0 = time.time()
        fresh = f"{base.LOCAL_REPOSITORY}:bench-{os.getpid()}"
        _mmdebstrap(engine, fresh)
        print(f"cold Debian base (mmdebstrap + import): {time.time() - t0:.0f}s")
        engine.run("rmi", fresh, check=False)
        cold = build.build("cpu", engine=engine, no_cache=True, log=quiet)
        print(f"cold CPU image build (no layer cache): {cold.seconds:.0f}s")
    first = build.build("cpu", engine=engine, log=quiet)
    t0 = time.time()
    again = build.build("cpu", engine=engine, log=quiet)
    print(f"cached CPU image build (build key hit): {time.time() - t0:.1f}s"
          f"{'' if again.cached else ' (NOT cached?)'}")
    print(f"CPU image {first.ref}: {first.size_bytes / 2**30:.2f} GiB")
    if args.cuda:
        cuda = build.build("cuda", engine=engine, log=quiet)
        print(f"CUDA image {cuda.ref}: {cuda.size_bytes / 2**30:.2f} GiB, built in {cuda.seconds:.0f}s")
    if args.skip_runs:
        return
    runs = {}
    for runner in ("subprocess", "container"):
        with tempfile.TemporaryDirectory(prefix=f"lmops-bench-{runner}-") as tmp:
            os.chmod(tmp, 0o755)  # the containers' user reads the corpus from it
            runs[runner] = [_run(Path(tmp), runner, args.preset) for _ in range(2)]
    print(f"\n{'runner':<11} {'cold':>8} {'cached':>8}   (whole `make run`, {args.preset} preset)")
    for runner, (cold, cached) in runs.items():
        print(f"{runner:<11} {cold:>7.1f}s {cached:>7.1f}s")
    sub, con = runs["subprocess"], runs["container"]
    print(f"container / subprocess: cold {con[0] / sub[0]:.2f}x, cached {con[1] / sub[1]:.2f}x")


def _mmdebstrap(engine, ref: str) -> None:
    import subprocess

    from lmops.images import base

    with tempfile.TemporaryDirectory() as tmp:
        tar = f"{tmp}/base.tar"
        subprocess.run(["mmdebstrap", "--variant=minbase", "--mode=root", "--include=" + ",".join(base.PACKAGES),
                        "--aptopt=Acquire::Check-Valid-Until \"false\"", base.SUITE, tar, *base.sources()],
                       check=True, capture_output=True)
        engine.run("import", tar, ref)


def _run(folder: Path, runner: str, preset: str) -> float:
    """One whole run in ``folder`` (its state, cache and corpus); returns the wall time."""
    from micro_pipeline import MICRO, write_corpus

    from lmops.pipeline import servers
    from lmops.pipeline.local import run_pipeline

    os.environ["LMOPS_STATE_DIR"] = str(folder / "state")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        if preset == "micro":
            overrides, sources = [*MICRO, f"cache_dir={folder / 'cache'}"], [str(write_corpus(folder / "corpus"))]
        else:
            overrides, sources = [f"cache_dir={folder / 'cache'}"], []
        t0 = time.time()
        s = run_pipeline("tiny", overrides, model_name="lmops-bench", sources=sources, runner=runner,
                         ray_address=None)
        wall = time.time() - t0
        print(f"[bench] {runner}: {wall:.1f}s ({', '.join(r['stage'] + ' ' + r['status'] for r in s['rows'])})",
              flush=True)
        return wall
    finally:
        if len(list((folder / "state" / "kfp").glob("*"))) >= 2:
            servers.stop_all()
        os.chdir(cwd)


if __name__ == "__main__":
    main()

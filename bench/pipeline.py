"""`make run` cold and cached: wall time, the stages' own work, and the orchestration overhead between them.

    python -P bench/pipeline.py [--config tiny] [--set key=value ...]

Runs the whole kfp pipeline locally twice in a fresh state folder (its own MLflow server, stage cache and
model server; all stopped at the end) and in a fresh working directory. Cold = nothing cached and the
MLflow server started; cached = the same run again. Overhead = wall time - the sum of the stages' own
seconds (kfp's task subprocesses and imports, the MLflow start, the server hand-over). Targets on 2 cores:
cold <= 8 min, cached <= 1 min.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lmops-bench-pipeline-"))
    os.environ["LMOPS_STATE_DIR"] = str(root / "state")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(root)
    from lmops.pipeline import servers
    from lmops.pipeline.local import run_pipeline

    overrides = [*args.set, f"cache_dir={root / 'state' / 'cache'}", f"workdir={root / 'runs'}", "serve.port=0"]
    results = {}
    try:
        for label in ("cold", "cached"):
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # the pipeline's own log is not the point here
                s = run_pipeline(args.config, overrides)
            wall = time.perf_counter() - started
            results[label] = (wall, s)
            ran = [r["stage"] for r in s["rows"] if r["status"] == "ran"]
            print(f"{label:<7} wall {wall:6.1f}s  stages {s['stages_s']:6.1f}s  orchestration {wall - s['stages_s']:5.1f}s"
                  f"  ({len(s['rows'])} tasks; ran: {', '.join(ran)})", flush=True)
    finally:
        servers.stop_all()
    cold, cached = results["cold"][0], results["cached"][0]
    print(f"cached / cold wall time: {cached / cold:.3f}x; targets: cold {cold / 60:.1f} min (<= 8), "
          f"cached {cached:.0f} s (<= 60)")
    per_task = (cached - results["cached"][1]["stages_s"]) / max(1, len(results["cached"][1]["rows"]))
    print(f"orchestration per task (cached run): {per_task:.2f}s", file=sys.stdout)


if __name__ == "__main__":
    main()

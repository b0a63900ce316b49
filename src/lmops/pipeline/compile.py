"""``make pipeline`` / ``lmops pipeline compile``: pipelines/lmops_pipeline.py -> the YAML the Kubeflow UI takes."""

from __future__ import annotations

import sys
from pathlib import Path

from lmops.config import REPO_ROOT

PIPELINE_YAML = REPO_ROOT / "pipelines" / "lmops_pipeline.yaml"


def compile_pipeline(out: str | Path = PIPELINE_YAML) -> Path:
    from kfp import compiler

    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from pipelines.lmops_pipeline import lmops_pipeline

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(lmops_pipeline, str(out))
    return out

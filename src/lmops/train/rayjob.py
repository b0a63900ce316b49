"""``python -m lmops.train.rayjob run|build|tokenize ...``: the RayJob entrypoint's command name (the rendered
RayJob and compiled pipelines name this module), and the one import for the KubeRay launch of a stage. The code lives in
lmops.train.kuberay: render (manifest), submit (apply and wait), entrypoint (runs on the head pod)."""

from __future__ import annotations

import sys

from lmops.train.kuberay.entrypoint import (
    fetch_on_every_node, main, publish_checkpoint, run, run_build, run_tokenize, stage_tokens,
)
from lmops.train.kuberay.render import (
    API_VERSION,
    KIND,
    cluster_config,
    decode_config,
    encode_config,
    entrypoint,
    job_env,
    render_rayjob,
    render_stage_rayjob,
)
from lmops.train.kuberay.submit import RayJobError, rayjob_outcome, stage_on_kuberay, submit_and_wait, train_on_kuberay

__all__ = ["API_VERSION", "KIND", "RayJobError", "cluster_config", "decode_config", "encode_config", "entrypoint",
           "fetch_on_every_node", "job_env", "main", "publish_checkpoint", "rayjob_outcome", "render_rayjob",
           "render_stage_rayjob", "run", "run_build", "run_tokenize", "stage_on_kuberay", "stage_tokens",
           "submit_and_wait", "train_on_kuberay"]

if __name__ == "__main__":
    sys.exit(main())

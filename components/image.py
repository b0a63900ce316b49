"""The images components run in: built from components/Dockerfile (``make images``).

$LMOPS_IMAGE / $LMOPS_CUDA_IMAGE point a compile at your registry's copies; the committed pipeline YAML
is compiled with the defaults below.
"""

import os

CPU_IMAGE = os.environ.get("LMOPS_IMAGE", "ghcr.io/lmops/lmops:0.1.0-cpu")
CUDA_IMAGE = os.environ.get("LMOPS_CUDA_IMAGE", "ghcr.io/lmops/lmops:0.1.0-cuda")

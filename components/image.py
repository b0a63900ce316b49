"""The images components run in: built from components/Dockerfile (``make images``).

The defaults are the config's ``image`` section defaults (what ``make images`` tags locally);
$LMOPS_IMAGE / $LMOPS_CUDA_IMAGE point a compile at your registry's copies. The committed pipeline YAML
is compiled with the defaults.
"""

import os

from lmops.config.image import ImageConfig

CPU_IMAGE = os.environ.get("LMOPS_IMAGE", ImageConfig().ref("cpu"))
CUDA_IMAGE = os.environ.get("LMOPS_CUDA_IMAGE", ImageConfig().ref("cuda"))

"""One kfp v2 component per lmops stage, plus ``resolve_config`` that validates the configuration once.

Each is a *lightweight* Python component whose ``base_image`` is the lmops image (``components/Dockerfile``),
so on a cluster its function runs inside that image, and locally kfp's ``SubprocessRunner`` runs it in this
environment. Components are typed interfaces only: each body is one call into ``lmops.pipeline.steps``,
whose summary row becomes the output artifact's metadata (shown in the Kubeflow UI).
"""

from components.build import build
from components.compress import compress
from components.config import resolve_config
from components.deploy import deploy
from components.evaluate import evaluate
from components.register import register
from components.tokenize import tokenize
from components.train import train

__all__ = ["resolve_config", "build", "tokenize", "train", "evaluate", "compress", "register",
           "deploy"]

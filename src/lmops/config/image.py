"""The lmops container images: one setting that every rendered workload uses.

``make images`` builds ``<repository>:<tag>-cpu`` and ``<repository>:<tag>-cuda``; the pipeline's tasks,
the RayJob's pods and the InferenceService's predictor all take their image from here, so pointing a
cluster at your registry is one change (``image.repository=registry.example.com/ml/lmops``).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from lmops import __version__
from lmops.config.base import Section

# a registry host (optional, with port) and a path of lower-case components, as the OCI distribution spec has it
REPOSITORY = re.compile(r"^([a-zA-Z0-9.-]+(:[0-9]+)?/)?[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$")
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,100}$")  # room for the -cpu / -cuda suffix within 128

Variant = Literal["cpu", "cuda"]


class ImageConfig(Section):
    """Where the lmops images live; a workload picks the cpu or cuda variant by whether it asks for GPUs."""

    repository: str = Field("localhost/lmops", min_length=1)
    """Registry and name of the images (what `make images` tags locally; push them and set your registry's)."""
    tag: str = __version__
    """Tag base: the images are <repository>:<tag>-cpu and <repository>:<tag>-cuda."""
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """When the kubelet pulls the image."""

    @field_validator("repository")
    @classmethod
    def _repository(cls, v: str) -> str:
        if not REPOSITORY.match(v):
            raise ValueError("not an image repository such as registry.example.com/ml/lmops (no tag here:"
                             " set image.tag)")
        return v

    @field_validator("tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        if not TAG.match(v):
            raise ValueError("not an image tag (letters, digits, '_', '.', '-'; at most 101 characters)")
        return v

    def ref(self, variant: Variant) -> str:
        """The full image reference of one variant, e.g. localhost/lmops:0.1.0-cpu."""
        return f"{self.repository}:{self.tag}-{variant}"

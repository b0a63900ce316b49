"""Our custom resources (group ``lmops.dev``, version ``v1alpha1``) as typed values.

The CRDs in manifests/crds carry the OpenAPI schema (types, enums, ranges, defaults) that the API
server enforces. What a schema cannot say without CEL rules, which a 1.20 API server drops silently
(steps that must rise, exactly one probe source, config overrides that must name real fields), is
checked here; ``SpecError`` names the field, and the operator reports it as the ``SpecValid``
condition instead of acting on the resource.
"""

from lmops.crd.common import GROUP, VERSION, API_VERSION, SpecError, crd_path, load_crd
from lmops.crd.deployment import ModelDeploymentSpec, parse_deployment
from lmops.crd.training import LMTrainingJobSpec, parse_training_job

__all__ = ["API_VERSION", "GROUP", "LMTrainingJobSpec", "ModelDeploymentSpec", "SpecError", "VERSION",
           "crd_path", "load_crd", "parse_deployment", "parse_training_job"]

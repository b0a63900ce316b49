"""The only package that talks to MLflow (stage 6 and the training runs of stage 3).

- ``tracking``: connection checks and training runs (TrainingRun, MetricLogger)
- ``models``:   register_variants (HF directory -> MLflow model version) and download_model
- ``aliases``:  promote (gated) / rollback (alias history kept as tags)
- ``lineage``:  manifests -> lineage tags -> printable chain (no MLflow)
- ``server``:   which server, valid names, models:/ URIs, readable errors
- ``register``: `lmops register` (one directory, gated against the champion)
- ``show``:     `lmops lineage` output
- ``local_server``: a local `mlflow server` in its own process group (tests, bench, make run)
- ``hf_pyfunc``: the MLflow model-from-code file logged with every version (not imported here)

Submodules that import mlflow do so inside functions, so ``import lmops.registry`` stays cheap.
"""

from lmops.registry.aliases import PromotionRefused, promote, rollback
from lmops.registry.models import Registration, RegisteredVersion, Variant, download_model, register_variants
from lmops.registry.show import describe_lineage, lineage_lines
from lmops.registry.tracking import (MetricLogger, RegistryError, TrainingRun, check_reachable, client_for,
                                     log_metrics, tracking_uri)

__all__ = [
    "MetricLogger", "PromotionRefused", "Registration", "RegisteredVersion", "RegistryError", "TrainingRun",
    "Variant", "check_reachable", "client_for", "describe_lineage", "download_model", "lineage_lines",
    "log_metrics", "promote", "register_variants", "rollback", "tracking_uri",
]

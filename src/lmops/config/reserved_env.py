"""The environment variables the InferenceService rendering sets itself, and why.

``deploy.env`` may not name them: a container's ``env`` is a list keyed by ``name``, and the API server
refuses a manifest that names one twice (KServe's CRD marks it x-kubernetes-list-type: map).
"""

from lmops.security.context import CACHE_ENV

RESERVED_ENV: dict[str, str] = {
    "LMOPS_API_KEYS": "the server's API keys, from the Secret deploy.api_key_secret names",
    "STORAGE_URI": "where KServe's storage initializer downloads the model from; set deploy.storage_uri",
    **{name: "a writable folder on an emptyDir: the root filesystem is read-only" for name in CACHE_ENV},
}

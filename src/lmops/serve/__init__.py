"""Stage 7: serving. A KServe model server for lmops model directories (``lmops serve``), the
InferenceService it runs as on Kubernetes, and the deploy stage that starts one or the other.

Modules, one concept each: loader (URI -> directory -> model), generate (batched decoding),
batcher (dynamic micro-batching), params (request limits), model (the kserve.Model), openai_api
(completions routes), server (binding + request log), inference_service (manifests), deploy.
Import kserve-dependent modules directly; this package import stays light.
"""

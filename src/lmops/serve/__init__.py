"""Stage 7: serving. A KServe model server for lmops model directories (``lmops serve``), the
InferenceService it runs as on Kubernetes, and the deploy stage that starts one or the other.

Modules, one concept each: loader (URI -> directory -> model), generate (batched decoding), scoring
(token log-probs, prompt scoring), batcher (dynamic micro-batching, per-request retry, cancellation),
params (request validation and limits), model (the kserve.Model: v1, v2 REST and gRPC), openai_schema
(OpenAI request bodies), openai_api (OpenAI routes), openai_format (logprobs/usage shapes), chat (chat
template), errors (protocol-shaped errors), guard (body limits, disconnects, escaped errors), server
(binding, gRPC, request log), inference_service (manifests), deploy.
Import kserve-dependent modules directly; this package import stays light.
"""

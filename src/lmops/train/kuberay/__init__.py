"""Stage 3 on a cluster: training as a KubeRay RayJob. One module per concept: ``render`` (the config
the job trains with, the manifest), ``submit`` (apply, wait, KubeRay's status decided),
``entrypoint`` (what the head pod runs) and ``staging`` (S3 URIs for the job when the pipeline's artifacts
are elsewhere). ``lmops.train.rayjob`` is the command-line name they share."""

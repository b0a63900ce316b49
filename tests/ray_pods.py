"""The shape of the tests' Ray pods on `lmops cluster`'s one 2-core node: a head and one worker pod with CPU
requests below their limits (they share the cores beside the submitter's 500m) and one training rank on the head
(``head_ranks``), so that a head and one worker pod make a two-node DDP run. Memory: the peaks measured in
README (head 1.3-2.6 GiB with a rank, so 4Gi; worker 0.45-0.95 GiB)."""

SMALL_PODS = {"gpus_per_worker": 0, "head_cpu": "1", "head_cpu_request": "500m", "worker_cpu": "1",
              "worker_cpu_request": "500m", "head_memory": "4Gi", "worker_memory": "2Gi"}

# A data stage's RayJob (build / tokenize on Ray Data): a head that runs the driver only and one data worker pod
# (kuberay.head_* and <stage>.ray.worker_*), beside the submitter's 500m on the same 2 cores.
SMALL_DATA_HEAD = {"head_cpu": "1", "head_cpu_request": "500m", "head_memory": "2Gi"}
SMALL_DATA_WORKERS = {"worker_replicas": 1, "worker_cpu": "1", "worker_cpu_request": "500m", "worker_memory": "2Gi"}

"""Which engine runs a data stage, and the Ray Data settings of ``engine: ray``.

``auto`` means ray when ``RAY_ADDRESS`` names a cluster (a KubeRay RayJob's driver has it set, as has
``make run``'s shared local Ray) or the pipeline's launcher is kuberay (the stage then runs as a RayJob of
its own: lmops.pipeline.steps), else local. The settings here change how the work is spread, never
its result: the ray stages sort or key every decision by content, not by block order or worker count.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from lmops.config import RayDataConfig

if TYPE_CHECKING:
    from ray.data import DataContext


# A sort of k blocks makes k*k partitions, each a return of a map task that the driver owns; Ray keeps a
# return under 100 KB (max_direct_call_object_size) in the owner's own memory, not in the object store. With
# one block per source file, 1 GB of corpus made 3969 band-row partitions of ~80 KB, about 370 MB in the driver.
PARTITION_MIN_BYTES = 1 << 20


def resolve(engine: str, launcher: str = "local") -> str:
    """"local" or "ray" for a configured engine (local, ray or auto) under the pipeline's launcher."""
    if engine == "auto":
        return "ray" if launcher == "kuberay" or os.environ.get("RAY_ADDRESS") else "local"
    return engine


def connect() -> None:
    """Join the Ray that RAY_ADDRESS names, or start one on this machine (all its CPUs, no dashboard).

    Kept apart from the train stage's ensure_ray: the data stages come first and must not import train.
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a runtime of our own needs no token
    # address="local": never silently join another `ray start` on this machine
    ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=True)


@contextmanager
def data_context(rc: RayDataConfig) -> Iterator[DataContext]:
    """Ray Data set up for a stage (and put back afterwards: the context is one per process).

    Order preserved (the shards are written in the order the blocks come), progress bars off (the stage logs a
    line per phase instead, which fits a pipeline log), CPUs capped at ``num_workers``.
    """
    from ray.data import ExecutionResources
    from ray.data.context import DataContext, ShuffleStrategy

    connect()
    # Ray Data's INFO lines (an execution plan and a "finished" line per step) would drown the stage's own
    # phase lines in a pipeline log
    data_logger = logging.getLogger("ray.data")
    level = data_logger.level
    data_logger.setLevel(logging.WARNING)
    previous = DataContext.get_current()
    ctx = previous.copy()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED  # tasks on pooled workers, no actors
    if rc.num_workers:
        ctx.execution_options.resource_limits = ExecutionResources(cpu=rc.num_workers)
    DataContext._set_current(ctx)
    try:
        yield ctx
    finally:
        DataContext._set_current(previous)
        data_logger.setLevel(level)


def sorted_by(ds, key):
    """``ds`` sorted by ``key`` (a column or a list of them), each key's rows in one block.

    From k blocks (a split/merge of the materialized input, no shuffle) so that the sort's k*k partitions of
    about size / k² bytes stay above PARTITION_MIN_BYTES, in the object store; at most the input's blocks
    (the parallelism a small input keeps). A block is then about sqrt(size x PARTITION_MIN_BYTES).
    """
    ds = ds.materialize()
    k = max(1, min(ds.num_blocks(), int(math.sqrt(ds.size_bytes() / PARTITION_MIN_BYTES))))
    return ds.repartition(k).sort(key)

"""What a Ray Train run asks of Ray, checked before it asks: a clear error instead of a run that waits forever.

Ray Train places its workers as one placement group and, by design, waits until the cluster can hold it: a
cluster's autoscaler (KubeRay) adds nodes. This machine's own Ray cannot grow, so there a request larger than
its total is refused at once, and one that other runs or actors hold the resources for is waited on for
``train.wait_for_resources_s`` and then refused, naming what holds them.
"""

from __future__ import annotations

import sys
import time
from collections import Counter

from lmops.config import Config
from lmops.errors import LmopsError


class RayResourceError(LmopsError):
    """The run's workers cannot be placed on this machine's Ray."""


def needed(cfg: Config) -> dict[str, float]:
    """The Ray resources all workers of the run ask for together."""
    tc = cfg.train
    per_worker = {"CPU": 1.0, **tc.resources_per_worker}
    if tc.use_gpu:
        per_worker["GPU"] = max(per_worker.get("GPU", 1.0), 1.0)
    return {name: amount * tc.num_workers for name, amount in per_worker.items() if amount}


def check_resources(cfg: Config, local: bool, *, poll_s: float = 1.0) -> None:
    """Fail fast instead of waiting forever for CPUs or GPUs this machine's Ray does not have or does not free.

    ``local``: the Ray runtime is this machine's (started here or recorded by ``make run``); nothing is checked
    against a cluster's Ray, whose autoscaler may add what is missing.
    """
    import ray

    if not local:
        return
    tc = cfg.train
    need = needed(cfg)
    total = ray.cluster_resources()
    if tc.use_gpu and total.get("GPU", 0) < need["GPU"]:
        raise RayResourceError(
            f"train.use_gpu=true asks for {tc.num_workers} GPU worker(s); this machine's Ray has "
            f"{int(total.get('GPU', 0))} GPU(s) (set train.use_gpu=false, or run on a GPU node / RAY_ADDRESS of a"
            " cluster)")
    if need["CPU"] > total.get("CPU", 0):
        raise RayResourceError(
            f"train.resources_per_worker asks for {need['CPU']:g} CPU(s) over {tc.num_workers} worker(s); this"
            f" machine's Ray has {total.get('CPU', 0):g} (lower train.resources_per_worker.CPU or train.num_workers)")
    _wait_until_free(need, tc.wait_for_resources_s, poll_s)


def _wait_until_free(need: dict[str, float], wait_s: float, poll_s: float) -> None:
    import ray

    deadline = time.monotonic() + wait_s
    told = False
    while True:
        free = ray.available_resources()
        short = {name: amount for name, amount in need.items() if free.get(name, 0) < amount}
        if not short:
            return
        if time.monotonic() >= deadline:
            raise RayResourceError(
                f"the run's workers need {_amounts(need)}, but this machine's Ray had only {_amounts(free, short)} "
                f"free for train.wait_for_resources_s={wait_s:g}s; held by: {holders()}. Wait for that run to end "
                "or stop it (`lmops stop` stops make run's Ray), or raise train.wait_for_resources_s")
        if not told:  # once, so that a run waiting its turn says why it does not start
            print(f"waiting up to {wait_s:g}s for {_amounts(need)} on this machine's Ray (free: "
                  f"{_amounts(free, short)}; held by: {holders()})", file=sys.stderr, flush=True)
            told = True
        time.sleep(poll_s)


def holders(limit: int = 8) -> str:
    """The placement groups and live actors on this Ray, by name: what another run holds."""
    import ray
    from ray._private import state

    groups = [f"placement group {g['name'] or g['placement_group_id'][:8]} "
              f"({_amounts(sum(map(Counter, g['bundles'].values()), Counter()))})"
              for g in ray.util.placement_group_table().values() if g["state"] == "CREATED"]
    actors = [f"actor {a['ActorClassName']} (pid {a['Pid']})" for a in state.actors().values() if a["State"] == "ALIVE"]
    found = groups + actors
    more = f", and {len(found) - limit} more" if len(found) > limit else ""
    return ", ".join(found[:limit]) + more if found else "nothing Ray lists (a run starting or ending)"


def _amounts(resources: dict[str, float], names=None) -> str:
    """``{CPU: 2, GPU: 1}`` as "2 CPU, 1 GPU"; ``names``: only these (default: all)."""
    return ", ".join(f"{resources.get(name, 0):g} {name}" for name in (names if names is not None else resources))

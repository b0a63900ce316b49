"""Ray Train around the plain loop: the same ``fit`` and ``train_step``, two lines different.

Per worker: ``prepare_model`` wraps the model in DDP on the worker's device, and the sampler draws
only this rank's share of the tokens. Everything else (optimizer, schedule, logging, validation) is
``lmops.train.loop``. Rank 0 saves checkpoints every ``checkpoint_every`` steps through
``ray.train.report``; Ray keeps the latest ``keep_checkpoints`` and restarts failed workers up to
``max_failures`` times, each restart resuming from the latest checkpoint.

Resume: the run's storage directory is named by the stage's cache key, so a re-run of the stage after
a crash (same inputs and config) finds the same directory. Every worker start — the first, or a
restart after a failure — scans it and resumes from the latest *complete* checkpoint
(see ``checkpoint.py``); ``train.resume: never`` gives the run a directory of its own.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from lmops import manifest, storage
from lmops.config import Config
from lmops.errors import LmopsError
from lmops.train import checkpoint as ckpt
from lmops.train.ray_head import LOCAL_RAY_ENV
from lmops.train.ray_resources import check_resources

if TYPE_CHECKING:  # the driver need not import the loop (and transformers) for a type name
    from lmops.train.loop import LossFn


class RayTrainError(LmopsError):
    """Ray could not run the training (resources, a worker failure beyond max_failures)."""


# ---------------------------------------------------------------- Ray runtime
def ensure_ray(num_cpus: int | None = None) -> bool:
    """Connect to the cluster named by RAY_ADDRESS, or start a local Ray. Returns True when local."""
    import ray

    # RAY_ADDRESS with LOCAL_RAY_ENV: the recorded runtime `make run` shares, on this machine
    local_address = os.environ.get(LOCAL_RAY_ENV) == "1"
    if ray.is_initialized():
        return not os.environ.get("RAY_ADDRESS") or local_address
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return local_address
    # a local runtime needs no token auth (Ray 2.60 turns it on and writes a token into $HOME)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # address="local": a runtime of our own. Without it ray.init() silently joins any `ray start` cluster
    # on this machine (and then refuses num_cpus); sharing one is opt-in, through RAY_ADDRESS.
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=True,
             logging_level="WARNING", configure_logging=True)
    return True


# ---------------------------------------------------------------- the driver
def run_ray_training(cfg: Config, tokens_dir: Path, *, run_name: str, storage_path: str,
                     tracking: dict[str, Any] | None = None,
                     loss_factory: Callable[[torch.device], LossFn] | None = None,
                     tokens_source: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Train with a TorchTrainer; returns (local dir of the final checkpoint, its trainer state).

    ``loss_factory``: called on every worker with its device, returns the training objective that replaces the
    plain LM loss (validation keeps the LM loss). A factory rather than a loss because what the loss holds (a
    distillation teacher, say) must be built on the worker's device; it travels to the workers pickled, so it
    must be importable there (a module-level function, or a ``functools.partial`` of one).

    The returned directory is a temporary download when storage is remote: copy what you need.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    tc = cfg.train
    local = ensure_ray()
    check_resources(cfg, local)
    if tc.resume == "never":  # a run directory of its own, so no earlier checkpoint is found
        run_name = f"{run_name}-{uuid.uuid4().hex[:8]}"
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "tokens_dir": str(Path(tokens_dir).resolve()),
                           "run_dir": f"{storage_path.rstrip('/')}/{run_name}", "tracking": tracking,
                           "loss_factory": loss_factory, "tokens_source": tokens_source,
                           # the files this process verified (the stage's cache key) are not read again there
                           "hashes": manifest.remembered_hashes()},
        scaling_config=ray.train.ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                                               resources_per_worker=tc.resources_per_worker or None),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=tc.keep_checkpoints),
            # this machine's Ray cannot grow: a worker group that failed to start is retried a few times (Ray
            # Train waits 60 s each), not forever as for a cluster whose autoscaler may add nodes
            failure_config=ray.train.FailureConfig(max_failures=tc.max_failures,
                                                   controller_failure_limit=2 if local else -1),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as e:  # TrainingFailedError wraps the worker's exception
        raise RayTrainError(f"Ray training run {run_name!r} failed: {_root_cause(e)}") from e
    if result.checkpoint is None:
        raise RayTrainError(f"Ray training run {run_name!r} finished without a checkpoint")
    final = Path(tempfile.mkdtemp(prefix="lmops-final-ckpt-"))
    result.checkpoint.to_directory(str(final))
    return final, json.loads((final / ckpt.STATE).read_text())


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    return f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------- one worker
def _tokens_on_this_node(tokens_dir: str, source: str | None) -> None:
    """The driver copied the tokens to every node alive when it started; a node that joined later (a Ray pod
    replaced after a failure, whose rank resumes from the last checkpoint) fetches its own copy, once per
    node (ranks sharing the node wait on a lock)."""
    import fcntl

    if not source or Path(tokens_dir, manifest.MANIFEST).is_file():
        return
    Path(tokens_dir).parent.mkdir(parents=True, exist_ok=True)
    with open(f"{tokens_dir}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not Path(tokens_dir, manifest.MANIFEST).is_file():
            storage.download_dir(source, tokens_dir)


def train_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    from lmops.data.tokens import load_split, open_tokens
    from lmops.model import Vocab, build_model, load_pretrained
    from lmops.train.data import Batches
    from lmops.train.loop import fit, maybe_compile, resolve_dtype, unwrap
    from lmops.train.optim import make_optimizer
    from lmops.registry import MetricLogger

    cfg = Config.model_validate(loop_config["cfg"])
    tc = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    dtype = resolve_dtype(tc.dtype, device)
    torch.manual_seed(tc.seed)  # identical initial weights on every rank (DDP also broadcasts them)

    manifest.remember(loop_config.get("hashes") or [])
    _tokens_on_this_node(loop_config["tokens_dir"], loop_config.get("tokens_source"))
    info = open_tokens(loop_config["tokens_dir"], splits=("train", "val"))
    start = _resume_point(loop_config["run_dir"])
    if start is not None:
        model = ckpt.load_model(start)
    elif cfg.model.pretrained:
        model = load_pretrained(cfg.model.pretrained, Vocab.from_tokens(info))
    else:
        model = build_model(cfg.model, Vocab.from_tokens(info), block_size=tc.block_size)
    model.to(device)
    optimizer = make_optimizer(model, tc, device.type)
    batches = Batches(load_split(info, "train"), tc.micro_batch_size, tc.block_size, seed=tc.seed,
                      rank=rank, world_size=world)
    state: dict[str, Any] = {"history": [], "resumes": []}
    start_step = 0
    if start is not None:
        state, rank_states = ckpt.load_training_state(start, optimizer, device)
        start_step = state["step"]
        _restore_rank_state(batches, rank_states, rank, world)
        state.setdefault("resumes", []).append({"step": start_step, "world_size": world})
        if rank == 0:
            print(f"resuming from step {start_step} ({start})", flush=True)

    val_batches = Batches(load_split(info, "val"), tc.micro_batch_size, tc.block_size,
                          seed=tc.seed + 1).take(tc.eval_batches)
    model = ray.train.torch.prepare_model(model)  # DDP (gloo on CPU, NCCL on GPU)
    tracker = MetricLogger(loop_config.get("tracking")) if rank == 0 else None

    def on_step(step: int, record: dict[str, Any]) -> None:
        if record:
            state["history"].append(record)
            if tracker:
                tracker.log(record, step)
        if step > 0 and (step % tc.checkpoint_every == 0 or step == tc.max_steps):
            rank_states = _gather_rank_states(batches)
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint = None
                if rank == 0:
                    ckpt.save_checkpoint(tmp, model=unwrap(model), optimizer=optimizer, rank_states=rank_states,
                                         step=step, state=state, tokenizer_dir=info.tokenizer_dir)
                    checkpoint = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report({"step": step, **_scalars(record)}, checkpoint=checkpoint)

    if rank == 0:  # Ray sets each worker's OMP_NUM_THREADS from its CPU resource (train.resources_per_worker)
        print(f"worker 0 of {world}: {device}, {torch.get_num_threads()} torch thread(s)", flush=True)
    loss_factory = loop_config.get("loss_factory")  # same loop, another objective (e.g. distillation)
    loss_fn = loss_factory(device) if loss_factory is not None else None
    fit(maybe_compile(model, tc), optimizer, batches, tc, device=device, dtype=dtype, val_batches=val_batches,
        start_step=start_step, on_step=on_step, log=(lambda s: print(s, flush=True)) if rank == 0 else None,
        loss_fn=loss_fn)


def _resume_point(run_dir: str) -> str | None:
    """The latest complete checkpoint of this run, as a local directory (None: start fresh).

    The run directory is scanned rather than asking ``ray.train.get_checkpoint()``: Ray only knows a
    checkpoint once every rank has reported it, so one that rank 0 wrote just before another rank
    died would be lost; the scan also finds the checkpoints of an earlier invocation of the stage.
    """
    found = ckpt.latest_complete(run_dir)
    return _local_dir(found[0]) if found else None


def _local_dir(path: str) -> str:
    """A local directory with the checkpoint's files (downloaded when storage is remote)."""
    if not storage.is_s3(path):
        return path
    return str(storage.download_dir(path, tempfile.mkdtemp(prefix="lmops-resume-")))


def _gather_rank_states(batches) -> list[dict[str, Any]]:
    """Every rank's sampler and torch RNG state, so each rank resumes its own stream."""
    import torch.distributed as dist

    mine = {"batches": batches.state_dict(), "torch_rng": torch.get_rng_state()}
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return everyone


def _restore_rank_state(batches, rank_states: list[dict[str, Any]], rank: int, world: int) -> None:
    if len(rank_states) != world:
        # a different world size shards the tokens differently: continue with a fresh stream per rank
        print(f"rank {rank}: checkpoint has {len(rank_states)} rank state(s), world size is {world}; "
              "sampling continues with fresh per-rank streams", flush=True)
        return
    batches.load_state_dict(rank_states[rank]["batches"])
    torch.set_rng_state(rank_states[rank]["torch_rng"])


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}

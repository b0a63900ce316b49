"""Training batches: random windows of block_size + 1 tokens from a memory-mapped token shard.

Sampling random windows (nanoGPT style) rather than walking the shard in order keeps every step an
unbiased sample of the split with no epoch bookkeeping; documents are already separated by EOS in
the packed ids, so a window may span a document boundary, as in pre-training.

Per-rank sharding: rank r of world_size draws only from its own contiguous 1/world_size of the
tokens, from its own RNG stream (seeded with (seed, rank)), so DDP ranks never see the same window
and a run is reproducible for a given world size. The RNG state is part of ``state_dict`` so a resumed
run continues the stream where the checkpoint left it instead of repeating the first batches.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

Batch = tuple[torch.Tensor, torch.Tensor]


class Batches:
    """An endless iterator of (inputs, targets) int64 tensors of shape (batch_size, block_size)."""

    def __init__(self, tokens: np.ndarray, batch_size: int, block_size: int, *, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        shard = len(tokens) // world_size
        self.lo = rank * shard
        self.hi = len(tokens) if rank == world_size - 1 else self.lo + shard
        if self.hi - self.lo < block_size + 1:
            raise ValueError(
                f"token shard too small: rank {rank}/{world_size} has {self.hi - self.lo} tokens, a window needs"
                f" block_size + 1 = {block_size + 1} (more data, a smaller block_size, or fewer workers)"
            )
        self.tokens = tokens
        self.batch_size = batch_size
        self.block_size = block_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, rank])))
        self.batches_drawn = 0

    def __iter__(self) -> "Batches":
        return self

    def __next__(self) -> Batch:
        # the last valid start leaves room for block_size + 1 tokens (inputs plus the shifted target)
        starts = self._rng.integers(self.lo, self.hi - self.block_size, size=self.batch_size)
        windows = np.stack([self.tokens[s : s + self.block_size + 1] for s in starts]).astype(np.int64)
        t = torch.from_numpy(windows)
        self.batches_drawn += 1
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()

    def take(self, n: int) -> list[Batch]:
        return [next(self) for _ in range(n)]

    def state_dict(self) -> dict[str, Any]:
        """JSON-able: the sampler's identity and RNG position."""
        return {"seed": self.seed, "rank": self.rank, "world_size": self.world_size,
                "batches_drawn": self.batches_drawn, "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved stream. A state from another (seed, rank, world_size) would silently change
        which windows this rank sees, so it is refused; the caller may then start a fresh stream."""
        mine = (self.seed, self.rank, self.world_size)
        theirs = (state["seed"], state["rank"], state["world_size"])
        if mine != theirs:
            raise ValueError(f"batch sampler state is for (seed, rank, world_size) = {theirs}, this sampler is {mine}")
        self._rng.bit_generator.state = state["rng"]
        self.batches_drawn = int(state["batches_drawn"])

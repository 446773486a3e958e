"""Checkpoints of data-parallel runs: the 1-process layout plus sharded optimizer state and every rank's RNG state.

A checkpoint written by N ranks is the same directory as a 1-process one (``training.checkpoint``: written to a
temporary directory by rank 0, manifest last, renamed into place), so ``ibtpo eval model=RUN_DIR`` and every reader
of the full model weights work unchanged; in addition:

- ``optimizer/``: with FSDP2, the sharded optimizer state written by every rank with ``torch.distributed.checkpoint``
  (``trainer_state.pt`` then holds ``optimizer: None``); it loads at any world size, one process included (DCP
  reshards). With DDP every rank holds the same full state, and rank 0 stores it in ``trainer_state.pt`` as one
  process does.
- ``rng/rank-NNNNN.pt``: every rank's RNG states (its sampling generator differs per rank unless ``dp_exact``).
- ``trainer_state.pt`` records ``world_size`` and ``dp_exact``. Resuming at the same world size is exact. A
  ``dp_exact`` run (or a 1-process one) resumes at any world size with ``dp_exact`` (the run does not depend on the
  world size); any other change of world size is refused with one line.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from ibtpo.training.checkpoint import TMP_PREFIX, CheckpointError, rng_state, save_checkpoint
from ibtpo.training.world import LocalWorld, barrier

OPTIMIZER_DIR = "optimizer"
RNG_DIR = "rng"


def _rng_file(directory: Path, rank: int) -> Path:
    return Path(directory) / RNG_DIR / f"rank-{rank:05d}.pt"


def save_data_parallel(run_dir: Path, step: int, policy, tokenizer, state: dict[str, Any], dp: LocalWorld,
                       optimizer: torch.optim.Optimizer, generator: torch.Generator, keep: int) -> None:
    """Write checkpoint `step` of a data-parallel run (a collective: every rank calls it)."""
    state = {**state, "world_size": dp.world, "dp_exact": dp.exact}
    if dp.kind == "fsdp2":
        state["optimizer"] = None

    def write_shards(directory: Path) -> None:  # every rank, into rank 0's temporary directory
        barrier()  # rank 0 created the directory and wrote the model
        if dp.kind == "fsdp2":
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

            dcp.save({"optimizer": get_optimizer_state_dict(dp.train_model, optimizer)},
                     checkpoint_id=str(Path(directory) / OPTIMIZER_DIR))
        path = _rng_file(directory, dp.rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(generator), path)
        barrier()  # every shard is on disk before rank 0 writes the manifest

    if dp.rank == 0:
        save_checkpoint(run_dir, step, policy, tokenizer, state, keep=keep, write_extra=write_shards)
    else:
        write_shards(Path(run_dir) / "checkpoints" / f"{TMP_PREFIX}step-{step:06d}")
    barrier()  # the checkpoint is in place (and `latest` names it) on every rank's return


def restore_optimizer(ckpt: Path, state: dict[str, Any], train_model, optimizer: torch.optim.Optimizer,
                      world: LocalWorld) -> None:
    """Load the optimizer state of checkpoint `ckpt` (either layout) into `optimizer` of this run in `world`."""
    sharded = state.get("optimizer") is None
    if not sharded:
        if world.kind == "fsdp2":
            raise CheckpointError(f"{ckpt}: its optimizer state is a full one (written by one process or DDP ranks); "
                                  f"resume it with data_parallel=ddp or in one process")
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError) as exc:  # parameter groups or sizes of another model
            raise CheckpointError(_mismatch(ckpt, exc)) from None
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    target = {"optimizer": get_optimizer_state_dict(train_model, optimizer)}
    try:
        with warnings.catch_warnings():  # one process reading shards of N: DCP says so in a warning
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
            dcp.load(target, checkpoint_id=str(Path(ckpt) / OPTIMIZER_DIR))
    except Exception as exc:  # a missing or foreign shard fails inside DCP with many error types
        raise CheckpointError(f"{Path(ckpt) / OPTIMIZER_DIR}: unreadable sharded optimizer state "
                              f"({str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__})"
                              ) from None
    try:
        set_optimizer_state_dict(train_model, optimizer, target["optimizer"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(_mismatch(ckpt, exc)) from None


def _mismatch(ckpt: Path, exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    why = lines[0] if lines else type(exc).__name__
    return (f"{ckpt}: its optimizer state does not fit the model this config builds ({why}); "
            f"a setting that changes the trainable parameters (LoRA, a trainer extension such as IIB-LPO's latent "
            f"code) cannot be changed on --resume: start a new run in another out_dir")


def extension_state(ckpt: Path, state: dict[str, Any], key: str) -> Any:
    """The saved state of the trainer extension keeping it under `key` (CheckpointError: the checkpoint has none,
    i.e. the extension was off when it was written)."""
    if key not in state:
        raise CheckpointError(f"{ckpt}: holds no state of the trainer extension that keeps {key!r} (it was off when "
                              f"this run was saved); a setting that turns an extension on cannot be changed on "
                              f"--resume: start a new run in another out_dir")
    return state[key]


def rank_rng(ckpt: Path, state: dict[str, Any], dp: LocalWorld) -> dict[str, Any]:
    """The RNG states this rank resumes with; CheckpointError (one line) when the world size changed and the run's
    draws depend on it."""
    saved_world = int(state.get("world_size", 1))
    saved_exact = bool(state.get("dp_exact", True)) or saved_world == 1
    world, exact, rank = dp.world, dp.exact, dp.rank
    if saved_world == world:
        path = _rng_file(ckpt, rank)
        if path.exists():
            try:
                return torch.load(path, weights_only=False)
            except Exception as exc:
                raise CheckpointError(f"{path}: unreadable RNG state ({type(exc).__name__})") from None
        return state["rng"]
    if saved_exact and exact:
        return state["rng"]  # a dp_exact run does not depend on the world size: rank 0's states hold for every rank
    raise CheckpointError(f"{ckpt} was written by {saved_world} rank(s) with dp_exact={str(saved_exact).lower()}; "
                          f"this run has {world} rank(s) with dp_exact={str(exact).lower()}: resume with "
                          f"{saved_world} rank(s) (torchrun --nproc_per_node {saved_world}), or use dp_exact runs")

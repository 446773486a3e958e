"""The RL trainer loop: rollout -> rewards -> advantages -> clipped policy update, with eval, logs and checkpoints.

One step:
  1. take ``questions_per_step`` problems from the train stream (data position advances; the stream is endless);
  2. grow one tree per question (independent sampling = depth-one tree of ``num_generations`` leaves);
  3. reward every leaf with the run's reward function (the testbed verifier, math-verify, or a user function);
     a method's trainer extension may act here (``algos/extensions.py``; IIB-LPO fits its CVAE and filters);
  4. lay the trees out as a training batch (``flatten_paths``) and compute advantages (registered estimator); the
     forward passes run on those rows or, with the packed layout, on each tree once (``training.packed``);
  5. ``ppo_epochs`` passes of mini-batch updates with the registered policy loss (+ k3 KL, - entropy bonus);
  6. log metrics, evaluate every ``eval_every`` steps, checkpoint every ``save_every`` steps, and probe the policy's
     IB-Score on fixed test questions every ``ib_probe_every`` steps (``evaluation.probe``; the cadence lives in
     ``run.py``).

Simplified on purpose: one process; the behaviour log-probs recorded at sampling time serve as the "old" log-probs
(sampling and training use the same weights and temperature, so they agree to float tolerance).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ibtpo.algos.losses import TOKEN_SELECTORS
from ibtpo.config.components import (advantage_estimator, ib_options, loss_config, policy_loss, regularizers,
                                     rollout_spec)
from ibtpo.config.schema import ConfigError, TrainConfig, check_training, save_config
from ibtpo.evaluation.heldout import evaluate_sets, write_samples
from ibtpo.core.guard import check_grad_norm
from ibtpo.methods.ib_tpo import tree_ib_stats
from ibtpo.training.models import add_lora, enable_checkpointing, is_lora, load_policy, resolve_device
from ibtpo.evaluation.probe import PROBE_SEED_OFFSET, grow_probe, probe_metrics
from ibtpo.data.prompt_fit import fit_prompts, run_question_sets
from ibtpo.rollout.grow import grow_problem_trees
from ibtpo.rollout.metrics import diversity_metrics, rollout_metrics
from ibtpo.rollout.render import render_tree
from ibtpo.rollout.samplers import SAMPLERS
from ibtpo.data.tasks import build_rewards, build_source
from ibtpo.training.batch import TrainBatch, flatten_paths, logprobs_in_chunks, padded_logprobs
from ibtpo.training.checkpoint import load_trainer_state, resume_point, rng_state, set_rng_state
from ibtpo.algos.extensions import build_extensions
from ibtpo.training.dist_checkpoint import extension_state, rank_rng, restore_optimizer
from ibtpo.training.distributed import join_world, rank_device
from ibtpo.training.memory import MemoryPlanError, plan_run, return_freed_buffers
from ibtpo.training.packed import pack_paths, plan_parts, row_budget, scale_gradient, shared_token_weights
from ibtpo.training.packed_forward import (attention_kind, choose_layout, one_row, packed_batch_logprobs,
                                           packed_logprobs)
from ibtpo.core.tree import Tree
from ibtpo.training.update import LogpGap, MiniBatch, accumulate_gradients, truncated_is_weights

IB_KEYS = ("ib/score_mean", "ib/cov_conf_gain", "ib/step_entropy", "ib/branching_nodes")
"""IB metrics a tree run reads from its own trees and an independent run copies from its probe."""


class Trainer:
    """Owns the policy, optimizer and run state of one training run."""

    def __init__(self, cfg: TrainConfig, resume: bool = False):
        self.cfg = check_training(cfg)
        self.started, self.time_up = time.perf_counter(), False  # max_train_time_s counts from here
        self.run_dir = Path(cfg.out_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(cfg.threads)
        if cfg.deterministic:  # before the first cuBLAS call; ops without a deterministic kernel only warn
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.device = rank_device(resolve_device(cfg.device))
        self.world = join_world(cfg, self.device)  # one process, or this rank's share of a data-parallel run
        # sampling streams: the run's seed (without dp_exact, rank r grows its own trees with its own streams)
        self.generator = torch.Generator().manual_seed(self.world.sampling_seed(cfg.seed))
        if cfg.eval_datasets and not cfg.dataset:
            raise ConfigError("eval_datasets: set dataset= too (training on the built-in task evaluates on its own "
                              "test split)")
        self.rewards = build_rewards(cfg)
        self.reward_fn = self.rewards.train
        ckpt, self.resume_note = resume_point(self.run_dir, resume, cfg.overwrite)  # nothing deleted yet
        self.policy, self.tokenizer = load_policy(str(ckpt) if ckpt else cfg.model, cfg.dtype,
                                                  cfg.gradient_checkpointing)
        self.policy.to(self.device)
        if cfg.lora_rank:
            self.policy = add_lora(self.policy, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout,
                                   cfg.lora_target_modules)
        self.policy.train()
        self.source = build_source(cfg, self.tokenizer)
        longest = fit_prompts(cfg, run_question_sets(self.source, cfg.questions_per_step), self.tokenizer, self.policy)
        self.memory_plan = None
        if cfg.update_memory_gib > 0:  # micro-batches (and checkpointing) sized from the budget, before any work
            self.cfg = cfg = self._apply_memory_plan(cfg, longest)
        self.ref = None
        if cfg.beta > 0 and not is_lora(self.policy):  # frozen reference for the KL term (LoRA: adapters disabled)
            self.ref, _ = load_policy(cfg.model, cfg.dtype)
            self.ref.to(self.device).eval().requires_grad_(False)
            self.ref = self.world.shard_frozen(self.ref)  # FSDP2: sharded like the policy
        self.extensions = build_extensions(self)  # a method's hooks (e.g. IIB-LPO), before the optimizer
        self.train_model = self.world.wrap(self.policy, self.device)  # the policy, or DDP / FSDP2 around it
        self.params = [p for p in self.train_model.parameters() if p.requires_grad]
        try:  # flattened rows or packed trees (training.packed); packing asked for but impossible: exit 2
            self.layout, self.layout_note = choose_layout(cfg.train_layout, self.policy,
                                                          [r for ext in self.extensions if (r := ext.packed_blocker())])
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.mask_kind = attention_kind(self.policy)
        for ext in self.extensions:
            self.params += ext.parameters()
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.spec = rollout_spec(cfg, self.tokenizer)  # before the scheduler: its LR factor counts optimizer steps
        self.shape, self.sampling = self.spec.shape, self.spec.sampling  # from the group size
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.adv_fn = advantage_estimator(cfg)  # the registered estimator with its options from the config
        self.loss_fn = policy_loss(cfg)  # guarded components (ibtpo.core.guard): one line naming a wrong one
        self.loss_cfg = loss_config(cfg)
        self.regularizers = regularizers(cfg)  # kl <- beta, entropy, ibro: those with a coefficient > 0
        self.probe_spec = rollout_spec(cfg, self.tokenizer, "ib")  # the IB probe grows IBTrees whatever the sampler
        self.ib = ib_options(cfg)
        self.step, self.tokens, self.data_pos = 0, 0, 0
        if ckpt is not None:
            state = load_trainer_state(ckpt)
            restore_optimizer(ckpt, state, self.train_model, self.optimizer, self.world)  # full or sharded (FSDP2)
            self.scheduler.load_state_dict(state["scheduler"])
            set_rng_state(rank_rng(ckpt, state, self.world), self.generator)
            self.step, self.tokens, self.data_pos = state["step"], state["tokens"], state["data_pos"]
            for ext in self.extensions:
                if ext.state_key:
                    ext.load_state_dict(extension_state(ckpt, state, ext.state_key))
        if ckpt is None:  # a fresh run: everything loaded, an overwritten run's checkpoints can go
            self.world.on_writer(shutil.rmtree, self.run_dir / "checkpoints", ignore_errors=True)
        self.logger = self.world.metrics_logger(self.run_dir, cfg.tensorboard, self.step if ckpt else None)
        self.world.on_writer(save_config, cfg, self.run_dir / "config.yaml")  # data parallel: rank 0 writes files

    def _apply_memory_plan(self, cfg: TrainConfig, longest_prompt: int) -> TrainConfig:
        """Plan the update's memory (``training.memory``); the config with the chosen micro-batch settings."""
        group = SAMPLERS.get(cfg.sampler).shape(cfg).group_size
        reference = cfg.beta > 0 and not is_lora(self.policy)
        try:
            plan = plan_run(cfg, self.policy, longest_prompt, group, self.device, reference)
        except MemoryPlanError as exc:
            raise ConfigError(str(exc)) from None
        if plan.gradient_checkpointing and not cfg.gradient_checkpointing:
            enable_checkpointing(self.policy)
        if self.device.type == "cpu":  # freed activation buffers go back to the system (glibc)
            return_freed_buffers()
        self.memory_plan = plan
        chosen = {"micro_batch_size": plan.micro_batch_size, "gradient_checkpointing": plan.gradient_checkpointing,
                  "logits_chunk_tokens": plan.logits_chunk_tokens}
        updated = cfg.model_copy(update=chosen)
        updated._profile = cfg._profile
        return updated

    # ----------------------------------------------------------------------------------------------------------------
    def _lr_factor(self, opt_step: int) -> float:
        cfg = self.cfg
        if opt_step < cfg.warmup_steps:
            return (opt_step + 1) / cfg.warmup_steps
        if cfg.lr_scheduler == "cosine":  # decays over whichever budget binds first: steps or generated tokens
            total = max(1, cfg.max_steps * cfg.ppo_epochs * self._minibatches_per_epoch() - cfg.warmup_steps)
            done = (opt_step - cfg.warmup_steps) / total
            if cfg.max_tokens > 0:  # tokens generated before this step's rollout (restored on resume)
                done = max(done, getattr(self, "tokens", 0) / cfg.max_tokens)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
        return 1.0

    def _minibatches_per_epoch(self) -> int:
        group = self.shape.group_size
        for ext in self.extensions:  # e.g. a filter that keeps some trajectories per question
            group = ext.rows_per_question(group)
        n = self.cfg.questions_per_step * group
        return max(1, math.ceil(n / self.cfg.mini_batch_size)) if self.cfg.mini_batch_size else 1

    def done(self) -> bool:
        cfg = self.cfg
        if self.time_up:  # max_train_time_s, read once at the end of each step
            return True
        return self.step >= cfg.max_steps or (cfg.max_tokens > 0 and self.tokens >= cfg.max_tokens)

    # ----------------------------------------------------------------------------------------------------------------
    def rollout(self) -> list[Tree]:
        """Sample and reward one batch of trees; advances the data position."""
        cfg = self.cfg
        problems = [self.source.train_problem(self.data_pos + i) for i in range(cfg.questions_per_step)]
        self.data_pos += len(problems)
        problems = problems[self.world.grow_block(len(problems))]  # data parallel: this rank's block of the batch
        # tie-breaking and node draws of the tree rules come from the run's generator (checkpointed with it)
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=self.generator)))
        return grow_problem_trees(self.spec, self.policy, self.tokenizer, problems, self.reward_fn, self.generator, rng,
                                  extras={k: v for ext in self.extensions for k, v in ext.grow_extras().items()})

    def forward_kwargs(self, batch: TrainBatch, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra token_logprobs keywords of the extensions for the policy's forward of batch rows `rows`."""
        out: dict[str, torch.Tensor] = {}
        for ext in self.extensions:
            out.update(ext.forward_kwargs(batch, rows, self.device))
        return out

    def recompute_old_logp(self) -> bool:
        """Old log-probs from a training forward (old_logp=recompute, or auto off a CPU or in another dtype than
        float32, where sampler and training log-probs are not bit-equal), else the sampler's."""
        cfg = self.cfg
        if cfg.old_logp == "auto":
            return self.device.type != "cpu" or cfg.dtype != "float32" or cfg.tis_cap is not None
        return cfg.old_logp == "recompute"

    def batch_logprobs(self, model, batch: TrainBatch, offsets: bool = True, lockstep=None) -> torch.Tensor:
        """No-grad token log-probs (N, T) of the whole batch under `model`, ``micro_batch_size`` rows per pass.
        `lockstep(n)`: the passes every rank runs over a sharded model (``training.world``)."""
        if self.layout == "packed":
            row_tokens, micro_tokens = row_budget(batch, self.cfg.pack_row_tokens, self.cfg.micro_batch_size,
                                                  one_row(self.mask_kind))
            return packed_batch_logprobs(model, batch, row_tokens, micro_tokens, self.cfg.temperature, self.device,
                                         self.cfg.logits_chunk_tokens, kind=self.mask_kind, lockstep=lockstep)
        extra = (lambda rows: self.forward_kwargs(batch, rows)) if offsets else None  # noqa: E731
        return logprobs_in_chunks(model, batch.input_ids, batch.attention_mask, self.cfg.temperature,
                                  self.cfg.micro_batch_size, self.device, extra, self.cfg.logits_chunk_tokens,
                                  lockstep)

    def update(self, batch: TrainBatch, advantages: torch.Tensor) -> dict[str, float]:
        """`ppo_epochs` passes of clipped policy-gradient mini-batch steps over one rollout batch.

        Each mini-batch is one optimizer step, run as micro-batches whose gradients accumulate (``update.py``)."""
        cfg = self.cfg
        ref_logp = self.reference_logprobs(batch) if cfg.beta > 0 else None
        behaviour = batch.old_logp
        old_logp = behaviour
        gap = LogpGap()
        extra: dict[str, float] = {}
        if self.recompute_old_logp():  # verl's old-log-prob pass: the policy before this batch's updates
            old_logp = self.batch_logprobs(self.policy, batch)
            gap.add(behaviour, old_logp, batch.response_mask)
        pg_advantages = advantages
        if cfg.tis_cap is not None:
            weights, extra = truncated_is_weights(old_logp, behaviour, batch.response_mask, cfg.tis_cap)
            pg_advantages = advantages * weights
        sums: dict[str, float] = {}
        count = 0
        weights = shared_token_weights(batch, cfg.shared_token_weight)
        budget = row_budget(batch, cfg.pack_row_tokens, cfg.micro_batch_size, one_row(self.mask_kind))
        for epoch in range(cfg.ppo_epochs):
            # this rank's rows of each mini-batch (data parallel, none: one zero-weight row, to take part)
            for rows in self.world.minibatches(batch.size, cfg.mini_batch_size, self.generator):
                has_rows = rows.numel() > 0
                rows = rows if has_rows else torch.zeros(1, dtype=torch.long)
                dev = self.device
                minibatch = MiniBatch(mask=batch.response_mask[rows].to(dev), old_logp=old_logp[rows].to(dev),
                                      advantages=advantages[rows].to(dev), pg_advantages=pg_advantages[rows].to(dev),
                                      ref_logp=None if ref_logp is None else ref_logp[rows].to(dev))
                if not has_rows:
                    minibatch.mask = minibatch.mask * 0
                parts = (plan_parts(batch, rows, *budget, one_row(self.mask_kind)) if self.layout == "packed"
                         else None)
                dp_args = self.world.accumulate_args(  # data parallel: global denominator, pass count, sync
                    minibatch.mask, cfg.loss_agg_mode, cfg.max_completion_length, cfg.micro_batch_size, has_rows,
                    None if parts is None else len(parts))
                # without a recompute pass, the first mini-batch's forward (weights not yet updated) gives the gap
                first = not gap.count and epoch == 0 and count == 0
                self.optimizer.zero_grad(set_to_none=True)
                m = accumulate_gradients(self._forward_rows(batch, rows, weights, budget[0]), minibatch, self.loss_fn,
                                         self.regularizers, self.loss_cfg, cfg.micro_batch_size,
                                         TOKEN_SELECTORS.get(cfg.policy_loss),
                                         self._gap_probe(gap, batch, rows) if first else None, parts=parts, **dp_args,
                                         on_policy=epoch == 0 and count == 0 and cfg.old_logp != "sampler")
                m["actor/grad_norm"] = self.world.clip_grad_norm(self.params, cfg.max_grad_norm)
                m["actor/lr"] = self.optimizer.param_groups[0]["lr"]
                check_grad_norm(m["actor/grad_norm"])  # NaN/inf: stop before the weights change
                m = self.world.combine(m, float(minibatch.mask.sum()))  # over every rank's rows, as one process
                self.optimizer.step()
                self.scheduler.step()
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
        out = {k: v / count for k, v in sums.items()}
        batch_metrics = {**gap.metrics(), **extra}  # token means over this rank's whole batch, then all ranks'
        out.update(self.world.combine(batch_metrics, float(batch.response_mask.sum()),
                                      {k: gap.count for k in gap.metrics()}))
        self.world.sync_policy()  # FSDP2: the rollout policy gets the new weights
        if ref_logp is None:
            out["actor/kl"] = 0.0
        return out

    def _forward_rows(self, batch: TrainBatch, rows: torch.Tensor, weights: torch.Tensor | None = None,
                      row_tokens: int = 0):
        """forward(sub) -> (logp, entropy) with gradients of mini-batch rows `rows[sub]`, on the device, padded back
        to the batch width: flattened rows on the columns that are not padding in every one of them, or the packed
        rows of their trees (``row_tokens`` per row). `weights` (N, T): the gradient weights of shared tokens
        (``shared_token_weight``; None = 1)."""
        cfg, dev = self.cfg, self.device

        def forward(sub: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            picked = rows[sub]
            if self.layout == "packed":  # wrappers: through their own forward
                packed = pack_paths(batch, picked, row_tokens, one_row=one_row(self.mask_kind))
                logp, entropy = packed_logprobs(self.train_model, packed,
                                                cfg.temperature, dev, cfg.logits_chunk_tokens, self.world.wrapped,
                                                self.mask_kind)
            else:
                logp, entropy = padded_logprobs(self.train_model, batch.input_ids, batch.attention_mask, picked,
                                                cfg.temperature, dev, self.world.logits_chunk(cfg.logits_chunk_tokens),
                                                **self.forward_kwargs(batch, picked))
            if weights is None:
                return logp, entropy
            w = weights[picked].to(dev)
            return scale_gradient(logp, w), scale_gradient(entropy, w)

        return forward

    def _gap_probe(self, gap: LogpGap, batch: TrainBatch, rows: torch.Tensor):
        """on_logp(sub, logp) adding the behaviour/training gap of mini-batch rows `rows[sub]` to `gap`."""
        def on_logp(sub: torch.Tensor, logp: torch.Tensor) -> None:
            gap.add(batch.old_logp[rows[sub]].to(logp.device), logp, batch.response_mask[rows[sub]].to(logp.device))
        return on_logp

    def reference_logprobs(self, batch: TrainBatch) -> torch.Tensor:
        """Token log-probs (N, T) under the frozen reference: the base model (LoRA: adapters disabled); no grad,
        ``micro_batch_size`` rows per pass, on CPU."""
        if self.ref is not None:  # FSDP2: the sharded reference's passes run in lockstep on every rank
            return self.batch_logprobs(self.ref, batch, offsets=False, lockstep=self.world.frozen_lockstep)
        with self.policy.disable_adapter():
            return self.batch_logprobs(self.policy, batch, offsets=False)

    def evaluate(self, phase=None) -> dict[str, float]:
        """avg@k, pass@k, maj@k, greedy accuracy, length and cap-hit rate on every evaluation set
        (``val/<set>/<metric>``). `phase(label, total)`: a progress bar factory (``ibtpo.reporting.progress.phase``).
        With ``eval_samples`` every completion goes to RUN_DIR/eval_samples/step_NNNNNN.jsonl."""
        cfg = self.cfg
        records = [] if cfg.eval_samples else None
        sets = {name: problems[:cfg.eval_questions] for name, problems in self.source.test_sets.items()}
        bar = (lambda name, total: phase(f"evaluation {name}", total)) if phase else None  # noqa: E731
        out, records = self.world.evaluate(  # data parallel: each rank its block of each set, with its own draws
            lambda c, s, r: evaluate_sets(c, self.policy, self.tokenizer, self.rewards, s, bar, r), cfg, sets, records)
        if records is not None:
            self.world.on_writer(write_samples, self.run_dir / "eval_samples" / f"step_{self.step:06d}.jsonl", records)
        return out

    def probe(self, phase=None) -> dict[str, float]:
        """IB probe of the current policy (``probe/*``); in independent-sampling runs also its ``ib/*`` metrics.
        `phase(label, total)`: a progress bar factory (``ibtpo.reporting.progress.phase``)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        problems = list(self.source.test_sets[self.source.name][:cfg.ib_probe_questions])
        problems = problems[self.world.grow_block(len(problems))]  # data parallel: its block, with its own draws
        bar = phase("IB probe", len(problems)) if phase else None
        trees = [] if not problems else grow_probe(
            self.probe_spec, self.policy, self.tokenizer, problems, self.rewards.check,
            seed=self.world.sampling_seed(cfg.seed + PROBE_SEED_OFFSET),
            batch_questions=min(len(problems), cfg.eval_batch_questions), on_batch=bar.on_batch if bar else None)
        if bar:
            bar.close()
        trees = self.world.gather_grown(trees)  # every rank's trees, in question order
        out = probe_metrics(trees, self.ib)
        if not SAMPLERS.get(cfg.sampler).branches:
            out.update({k: out[f"probe/{k}"] for k in IB_KEYS if f"probe/{k}" in out})
        out["perf/probe_time_s"] = time.perf_counter() - t0
        return out

    def save(self) -> None:
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "rng": rng_state(self.generator), "step": self.step, "tokens": self.tokens,
                 "data_pos": self.data_pos, "config": self.cfg.model_dump()}
        for ext in self.extensions:
            if ext.state_key:
                state[ext.state_key] = ext.state_dict()
        self.world.save(self.run_dir, self.step, self.policy, self.tokenizer, state, self.optimizer, self.generator,
                        self.cfg.keep_checkpoints)  # data parallel: every rank its shards and RNG states

    def dump_trees(self, trees: list[Tree], step: int) -> Path:
        """Write one step's trees to RUN_DIR/trees/step_NNNNNN.json (tokens, texts, p_hat) and .txt (drawn)."""
        path = self.run_dir / "trees" / f"step_{step:06d}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"step": step, "sampler": self.cfg.sampler,
                                    "trees": [t.to_dict(self.tokenizer) for t in trees]}))
        path.with_suffix(".txt").write_text("\n\n".join(render_tree(t, self.tokenizer) for t in trees) + "\n")
        return path

    def _row_extras(self, rows) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for ext in self.extensions:
            out.update(ext.row_extras(rows))
        return out

    def advantages(self, batch: TrainBatch) -> torch.Tensor:
        """(N, T) advantages of the batch's tokens: the registered estimator, then a method's adjustment."""
        advantages = self.adv_fn(rewards=batch.rewards, response_mask=batch.response_mask, group_ids=batch.group_ids,
                                 node_index=batch.node_index, nodes=batch.nodes, ancestor_index=batch.ancestor_index)
        for ext in self.extensions:  # e.g. IIB-LPO's self-reward
            advantages = ext.adjust_advantages(batch, advantages)
        return advantages

    def tree_metrics(self, trees: list[Tree], ext_metrics: dict[str, float]) -> dict[str, float]:
        """Rollout, diversity, reward-guard and (tree runs) IB metrics of the step's trees, over every rank's."""
        metrics = rollout_metrics(trees)
        metrics.update(ext_metrics)
        metrics.update(diversity_metrics(trees, self.tokenizer, self.rewards.extract))
        if hasattr(self.reward_fn, "pop_stats"):  # reward/errors, reward/none of the guarded reward function
            metrics.update(self.reward_fn.pop_stats())
        if SAMPLERS.get(self.cfg.sampler).branches:  # IB monitoring from the step's own trees (else: the probe)
            ib = tree_ib_stats(trees, self.ib)
            metrics.update({k: v for k, v in ib.items() if not math.isnan(v)})
        return self.world.rollout_metrics(metrics, trees)

    # ----------------------------------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One RL step; returns its metrics."""
        t0 = time.perf_counter()
        # ---- the algorithm: rollout, rewards, advantages ----------------------------------------------------------
        trees = self.rollout()  # one tree per question, every leaf rewarded
        t_roll = time.perf_counter() - t0
        ext_metrics: dict[str, float] = {}
        for ext in self.extensions:  # e.g. IIB-LPO's CVAE fit and IB filter
            ext_metrics.update(ext.after_rollout(trees))
        batch = flatten_paths(trees, self.tokenizer.pad_token_id, self._row_extras if self.extensions else None)
        advantages = self.advantages(batch)
        # ---- plumbing: metrics, the rows this process trains on, tree dumps --------------------------------------
        metrics = self.tree_metrics(trees, ext_metrics)
        new_tokens = self.world.count_grown(sum(t.new_tokens for t in trees))
        batch, advantages = self.world.train_rows(batch, advantages, len(trees))  # dp_exact: its questions' rows
        if self.cfg.dump_trees and (self.step + 1) % self.cfg.dump_trees == 0:
            self.world.on_writer(self.dump_trees, trees, self.step + 1)
        # ---- the algorithm: the policy update ----------------------------------------------------------------------
        t1 = time.perf_counter()
        metrics.update(self.update(batch, advantages))
        t_update = time.perf_counter() - t1
        # ---- plumbing: counters, time budget, timings ----------------------------------------------------------
        self.step += 1
        self.tokens += new_tokens
        limit = self.cfg.max_train_time_s
        self.time_up = limit > 0 and time.perf_counter() - self.started >= limit
        dt = time.perf_counter() - t0
        metrics.update({"train/tokens": self.tokens, "train/questions": self.data_pos,
                        "perf/step_time_s": dt, "perf/rollout_time_s": t_roll,
                        "perf/tokens_per_s": new_tokens / max(t_roll, 1e-9), "perf/update_time_s": t_update,
                        "perf/train_tokens_per_s": float(batch.attention_mask.sum()) * self.cfg.ppo_epochs / t_update,
                        "critic/advantages/mean": self.world.masked_mean(advantages, batch.response_mask)})
        return metrics

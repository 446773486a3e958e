"""The one config object of a training run, with YAML loading, command-line overrides and one-line errors.

Field names follow TRL's GRPOConfig where one exists (``num_generations``, ``epsilon``, ``beta``, ...); verl's names
are accepted as aliases (``ALIASES``). Every field has a one-line doc (its ``description``), shown by
``ibtpo train --help-config``.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ibtpo.algos.advantages import ADV_ESTIMATORS
from ibtpo.algos.losses import LOSS_AGG_MODES, POLICY_LOSSES, LossConfig
from ibtpo.algos.presets import DEFAULT_ALGORITHM, PRESETS, apply_preset
from ibtpo.methods.grpo import GRPOOptions
from ibtpo.methods.ib_tpo import IBTPOOptions
from ibtpo.methods.iib_lpo.sampler import IIBSamplerOptions
from ibtpo.methods.treepo import FixedWidthOptions
from ibtpo.core.guard import first_line, user_location
from ibtpo.config.profiles import TESTBED, profile_values
from ibtpo.core.registry import Registry, RegistryError, default_of, import_file
from ibtpo.rollout.rules import BranchingOptions
from ibtpo.rollout.samplers import SAMPLERS, TreeShape, checked_problems, checked_shape
from ibtpo.core.tree_stats import IB_DEFAULTS

TESTBED_MODEL = TESTBED
REGISTRY_FIELDS: dict[str, Registry] = {"algorithm": PRESETS, "sampler": SAMPLERS, "adv_estimator": ADV_ESTIMATORS,
                                        "policy_loss": POLICY_LOSSES}
"""Fields whose value names a registered component (built-in, registered from Python, or ``module:name``)."""


def _loss(name: str):
    return default_of(LossConfig, name)


def _shape(name: str, options: type = TreeShape):
    """The default of a tree setting: of the shape, or of the options of the samplers that read it."""
    return default_of(options, name)


def import_plugins(specs: list[str]) -> None:
    """Import each ``pkg.module`` or ``path/file.py`` (it registers its components); ConfigError names a failure."""
    import importlib

    for spec in specs:
        try:
            if spec.endswith(".py"):
                if not Path(spec).expanduser().is_file():
                    raise ConfigError(f"plugins: plugin '{spec}:__name__': file {spec} not found")
                import_file(spec)
            else:
                importlib.import_module(spec)
        except ConfigError:
            raise
        except RegistryError as exc:  # e.g. a registration refused: at the plugin's line that made it
            where = user_location(exc)
            raise ConfigError(f"plugins: {spec}: {exc}{f' (at {where})' if where else ''}") from exc
        except (Exception, SystemExit) as exc:  # the plugin's own error, at its file:line
            where = user_location(exc)
            raise ConfigError(f"plugins: cannot import {spec!r} ({first_line(exc)}"
                              f"{f' at {where}' if where else ''})") from exc
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
TASK_DEFAULTS: dict[str, dict[str, Any]] = {"chain": {"model": "testbed-chain", "max_completion_length": 128}}
"""Defaults a built-in task brings along (its shipped policy, a length cap its solutions fit in); set fields win."""


class ConfigError(ValueError):
    """A bad config value; its message is one line that names the culprit."""


class TrainConfig(BaseModel):
    """Everything a training run reads. Defaults are the CPU testbed's main job."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    """allow_inf_nan=False: every float field must be finite (inf, nan, 1e400 are refused at validation)."""

    # --- run -----------------------------------------------------------------------------------------------------
    out_dir: str = Field("runs/default", description="Run directory (config, metrics, checkpoints, plots).")
    seed: int = Field(0, ge=0, description="Seed of sampling, data order and every RNG of the run.")
    max_steps: int = Field(100_000, ge=1, description="Stop after this many RL steps (a cap: the main job stops on max_tokens).")
    max_tokens: int = Field(1_500_000, ge=0, description="Stop once this many new tokens were generated in training: the budget every algorithm is compared at (0 = no limit).")
    max_train_time_s: float = Field(0.0, ge=0.0, description="Stop once the run has taken this many seconds (this process, evaluations included; the final evaluation still runs; 0 = no limit).")
    eval_every: int = Field(50, ge=0, description="Evaluate every N steps, plus before the first and after the last (0 = only those).")
    save_every: int = Field(50, ge=0, description="Write a checkpoint every N steps, plus at the end (0 = only at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="How many recent checkpoints to keep on disk.")
    threads: int = Field(2, ge=1, description="CPU threads for torch.")
    tensorboard: bool = Field(True, description="Write TensorBoard event files in the run directory.")
    plots: bool = Field(True, description="Draw PNG plots of the run at the end.")
    progress: bool = Field(True, description="Show a progress bar (when the output is not a terminal, e.g. a log file: plain progress lines instead).")
    progress_every: int = Field(0, ge=0, description="Output not a terminal: a progress line every N steps, and at each evaluation and the last step (0 = whenever 30 s have passed).")
    overwrite: bool = Field(False, description="Allow a new run in an out_dir that already holds checkpoints (they are deleted).")
    plugins: list[str] = Field(default_factory=list, description="Python modules (pkg.module) or files (path/file.py) imported first: they register your own estimators, samplers, branch rules, losses, presets or trainer extensions (or name one directly as module:name).")

    # --- model -----------------------------------------------------------------------------------------------------
    model: str = Field(TESTBED_MODEL, description="'testbed' (the shipped tiny policy of the sum task), 'testbed-chain' (of the chain task), a local transformers causal LM directory, or a hub id already in the local HF cache.")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Parameter dtype of the policy.")
    device: str = Field("auto", description="Where the policy runs: auto (cuda when available, else cpu), cpu, cuda, cuda:1, ...")
    deterministic: bool = Field(False, description="Deterministic GPU kernels (torch.use_deterministic_algorithms, cuBLAS workspace config): a run and its --resume repeat bit for bit on a GPU, somewhat slower. CPU runs are deterministic anyway.")
    data_parallel: Literal["auto", "ddp", "fsdp2"] = Field("auto", description="Under torchrun / accelerate launch (WORLD_SIZE > 1): ddp (DistributedDataParallel, a full model per rank), fsdp2 (torch fully_shard: sharded parameters, gradients and optimizer state) or auto (fsdp2 on CUDA, ddp on CPU). See docs/distributed.md.")
    dp_exact: bool = Field(False, description="Data parallel: every rank grows every tree and runs every evaluation, then trains on its share: the run equals the 1-process run (only the update is sharded). false: each rank grows its own questions' trees (faster; other random draws).")
    dist_timeout_s: float = Field(1800.0, gt=0, description="Data parallel: seconds a collective waits for the other ranks before the job stops (a dead or stuck rank ends the run instead of hanging it).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass (less memory, ~30% more compute).")
    lora_rank: int = Field(0, ge=0, description="LoRA rank through peft (0 = train every weight).")
    lora_alpha: float = Field(32.0, gt=0.0, description="LoRA alpha (the adapter update is scaled by alpha / rank).")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA adapter input.")
    lora_target_modules: str | list[str] = Field("all-linear", description="Modules that get adapters: 'all-linear' or a list of module names (e.g. [q_proj, v_proj]).")

    # --- task --------------------------------------------------------------------------------------------------------
    task: Literal["sum", "chain", "arith"] = Field("sum", description="Built-in task: 'sum' (multi-term sums, any order, ~4 steps), 'chain' (labelled +/- chains carried forward, ~11 steps / ~90 tokens; brings model=testbed-chain and max_completion_length=128 unless set) or 'arith' (one- and two-step arithmetic word problems for real models, math reward, strict and lenient accuracy in evaluation).")
    task_min_terms: int = Field(3, ge=2, le=8, description="Fewest terms of a sum problem.")
    task_max_terms: int = Field(4, ge=2, le=8, description="Most terms of a sum problem.")
    task_max_value: int = Field(30, ge=2, le=999, description="Terms are drawn from 1..task_max_value.")
    chain_min_ops: int = Field(9, ge=1, le=16, description="chain task: fewest operations of a problem (one step each, plus the answer step).")
    chain_max_ops: int = Field(11, ge=1, le=16, description="chain task: most operations of a problem.")
    chain_max_operand: int = Field(9, ge=1, le=999, description="chain task: operands are drawn from 1..chain_max_operand (at most chain_max_total // 2).")
    chain_start_last: bool = Field(False, description="chain task: write the start value on the line before step 1 (S=53) instead of right after Q:.")
    chain_max_total: int = Field(99, ge=2, le=9999, description="chain task: the start value and every running total lie in 0..chain_max_total.")
    task_seed: int = Field(1234, ge=0, description="Seed of the problem generator (fixes the test split).")
    test_size: int = Field(512, ge=1, description="Problems in the held-out test split (built-in task; a dataset without eval_datasets holds out this many rows).")
    dataset: str | None = Field(None, description="Training questions from a local file or dir (jsonl, json, parquet, a saved `datasets` dir; DIR:split picks a split); unset = the built-in task.")
    dataset_layout: Literal["auto", "dapo", "math500", "aime", "gsm8k", "columns"] = Field("auto", description="Row layout of the dataset file (auto = told from the columns); eval_datasets next to a dataset are always told from their columns.")
    prompt_column: str | None = Field(None, description="Column holding the prompt (a string or chat messages) in the dataset file (ibtpo eval: the eval files); overrides the layout's.")
    answer_column: str | None = Field(None, description="Column holding the reference answer; overrides the layout's.")
    id_column: str | None = Field(None, description="Column holding a question id; overrides the layout's.")
    prompt_template: str | None = Field(None, description="Template with {prompt} wrapped around each question (for chat messages: the last user turn), or a preset: boxed, answer_line.")
    chat_template: Literal["auto", "always", "never"] = Field("auto", description="Apply the tokenizer's chat template: auto = to every prompt when the tokenizer has one (a string becomes one user turn); always; never (plain strings).")
    skip_bad_rows: bool = Field(False, description="Skip (and count) malformed dataset rows instead of failing on the first one.")
    eval_datasets: list[str] = Field(default_factory=list, description="Evaluation sets, each PATH or NAME=PATH (metrics val/NAME/...); empty = the task's test split.")
    reward_fn: str = Field("auto", description="Reward: auto (sum for the built-in task, math when questions come from dataset or eval_datasets files), sum, math (math-verify), or module:function / file.py:function (TRL signature).")
    format_reward_weight: float = Field(0.0, ge=0.0, lt=1.0, description="Add this weight x the format reward (a final boxed or 'Answer:' line) to the reward (< 1, so a wrong answer never reaches the correct threshold 1).")
    reward_errors: Literal["fail", "zero"] = Field("fail", description="A reward function that raises: stop the run naming the question (fail), or score 0, count it and go on (zero).")
    reward_timeout_s: float = Field(600.0, ge=0.0, description="A reward function call (one batch of completions) that has not returned after this many seconds ends the run with one line naming the function and the question (0 = no limit; docs/robustness.md).")
    component_timeout_s: float = Field(600.0, ge=0.0, description="The same limit for one call of an advantage estimator, policy loss, regulariser or trainer-extension hook (0 = no limit); samplers and their branch rules are not limited (their model calls may take long), the rewards they call are.")

    # --- rollout -----------------------------------------------------------------------------------------------------
    questions_per_step: int = Field(16, ge=1, description="Questions (prompts) per RL step.")
    num_generations: int = Field(8, ge=1, description="Completions per question (group size G).")
    temperature: float = Field(1.0, gt=0.0, le=10.0, description="Sampling temperature of rollouts.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass of rollouts (1.0 = off).")
    top_k: int = Field(0, ge=0, description="Top-k sampling of rollouts (0 = off).")
    max_completion_length: int = Field(48, ge=1, le=4096, description="Length cap (tokens) of a completion.")

    # --- tree rollouts -----------------------------------------------------------------------------------------------
    sampler: str = Field("independent", description="Rollout (registered name or module:name): independent (G=num_generations), ib (IBTree), entropy (TreeRL), random, fixed_width (TreePO), iib (IIB-LPO: G = tree_b0*(1+iib_forks)).")
    tree_b0: int = Field(_shape("b0"), ge=1, description="Tree samplers: B0, trajectories sampled from the root first.")
    tree_l: int = Field(_shape("rounds"), ge=1, description="Tree samplers: L, rounds including the first (G = B0 + (L-1)*K*B).")
    tree_k: int = Field(_shape("k"), ge=1, description="Tree samplers: K, fork points per tree per round.")
    tree_b: int = Field(_shape("b"), ge=1, description="Tree samplers: B, continuations drawn at each fork point.")
    tree_min_room: int = Field(_shape("min_room", BranchingOptions), ge=1, description="A fork point needs at least this many tokens left under max_completion_length.")
    ib_beta: float = Field(IB_DEFAULTS.beta, gt=0.0, description="IB-Score beta (docs/ib_score.md; the paper, section 3).")
    ib_conf: Literal["mean", "product"] = Field(IB_DEFAULTS.conf_mode, description="Step confidence: exp(mean token log-prob) or exp(sum).")
    ib_zero_phat: Literal["one", "skip"] = Field(IB_DEFAULTS.zero_phat, description="IB rule at a node with p_hat=0: score it with r=1, or skip it.")
    tree_root_candidate: bool = Field(_shape("root_candidate", BranchingOptions), description="Tree rounds may fork from the root (a fresh trajectory).")
    treepo_segment_length: int = Field(_shape("segment_length", FixedWidthOptions), ge=1, description="fixed_width sampler: tokens per segment.")
    treepo_width: int = Field(_shape("width", FixedWidthOptions), ge=1, description="fixed_width sampler: children of each open segment per depth.")
    treepo_max_depth: int = Field(_shape("max_depth", FixedWidthOptions), ge=1, description="fixed_width sampler: deepest level that still branches.")
    iib_forks: int = Field(2, ge=1, description="iib sampler: forks drawn along each of the tree_b0 initial rollouts (one level deep).")
    iib_fork_top: float = Field(_shape("fork_top", IIBSamplerOptions), gt=0.0, le=1.0, description="iib sampler: share of a rollout's tokens, highest entropy first, that are candidate fork points (at least one).")
    iib_latent: Literal["cvae", "random", "none"] = Field("cvae", description="iib sampler: latent code of a branch from the CVAE prior p(z|prefix), from N(0, I), or none (plain forks).")
    iib_latent_dim: int = Field(16, ge=1, description="iib: dimension of the latent code z.")
    iib_inject_scale: float = Field(0.25, gt=0.0, description="iib: initial norm of the embedding offset W z, relative to the mean token-embedding norm (W is then trained by the RL loss).")
    iib_cvae_hidden: int = Field(128, ge=1, description="iib: hidden width of the CVAE's MLPs.")
    iib_cvae_lr: float = Field(1e-3, gt=0.0, description="iib: Adam learning rate of the CVAE.")
    iib_cvae_steps: int = Field(4, ge=0, description="iib: CVAE updates per RL step, on that step's correct (prefix, continuation) pairs.")
    iib_keep: int = Field(0, ge=0, description="IB filter: trajectories per question kept for the update, best IB score first (0 = no filter).")
    iib_beta: float = Field(0.05, ge=0.0, description="IB filter: weight beta of I(q;r) in the score I(r;a) - beta*I(q;r).")
    iib_self_reward: float = Field(0.0, ge=0.0, description="IB self-reward: adds this times the group-standardised IB score to each kept trajectory's advantage (after the outcome's group normalisation).")
    step_delimiter: str = Field("\n\n", min_length=1, description="Text that ends a reasoning step.")
    min_step_tokens: int = Field(3, ge=1, description="Steps shorter than this merge into the previous step.")
    prefix_reuse: bool = Field(True, description="Continue forks from the cached keys/values of their prefix (false: re-encode the prefix).")
    rollout_backend: Literal["auto", "eager", "static"] = Field("auto", description="Rollout decoder: eager (transformers forward per round), static (preallocated KV slots, continuous batching, CUDA graphs), auto (static on CUDA for Llama/Qwen models, eager otherwise).")
    rollout_slots_gib: float = Field(0.0, ge=0.0, description="static backend: GiB of its preallocated key/value slots, the rows decoded at once (0 = 35% of the free GPU memory); the cache kept for forks is kv_budget_gib.")
    dump_trees: int = Field(0, ge=0, description="Write the step's trees as JSON to RUN_DIR/trees every N steps (0 = never).")
    ib_probe_every: int = Field(100, ge=0, description="Grow IBTrees (tree_b0/l/k/b) on the probe questions every N steps, and before the first and after the last (0 = never).")
    ib_probe_questions: int = Field(32, ge=1, description="Probe questions: the first N of the test split, the same at every probe (grown in one batch).")

    # --- algorithm -------------------------------------------------------------------------------------------------
    algorithm: str = Field(DEFAULT_ALGORITHM, description="Preset = sampler + advantage estimator + loss (docs/methods; registered name); fields you set yourself win.")
    adv_estimator: str = Field("grpo", description="Advantage estimator (registered name or module:name): grpo, tree_grpo (GRPO over a tree's leaves), treerl, treepo, ib_tpo.")
    ib_tpo_lambda: float = Field(default_of(IBTPOOptions, "lam"), ge=0.0, description="ib_tpo: weight lambda of the local IB advantage A_IB (docs/methods/ib_tpo.md).")
    adv_leaf_weight: bool = Field(default_of(IBTPOOptions, "leaf_weight"), description="treerl / ib_tpo: divide each step's advantage by sqrt(leaves under it) (TreeRL).")
    policy_loss: str = Field("ppo_clip", description="Policy loss (registered name or module:name): ppo_clip, clip_cov, kl_cov (arXiv 2505.22617).")
    clip_cov_ratio: float = Field(_loss("clip_cov_ratio"), ge=0.0, le=1.0, description="clip_cov: share of response tokens whose gradient is removed.")
    clip_cov_lb: float = Field(_loss("clip_cov_lb"), description="clip_cov: lower bound of the token covariance band tokens are drawn from.")
    clip_cov_ub: float = Field(_loss("clip_cov_ub"), description="clip_cov: upper bound of that band.")
    kl_cov_ratio: float = Field(_loss("kl_cov_ratio"), ge=0.0, le=1.0, description="kl_cov: share of response tokens (highest covariance) that get the KL penalty.")
    kl_cov_coef: float = Field(_loss("kl_cov_coef"), ge=0.0, description="kl_cov: coefficient of |log pi - log pi_old| on those tokens.")
    ibro_coef: float = Field(_loss("ibro_coef"), ge=0.0, description="IBRO: coefficient of the advantage-weighted entropy term -A_t*H_t (0 = off).")
    scale_rewards: Literal["group", "batch", "none"] = Field(default_of(GRPOOptions, "scale_rewards"), description="Divide centred rewards by the group std, the batch std, or not at all.")
    epsilon: float = Field(_loss("epsilon"), ge=0.0, le=1.0, description="Lower clip range of the ratio (1 - epsilon).")
    epsilon_high: float | None = Field(_loss("epsilon_high"), ge=0.0, le=10.0, description="Upper clip range (clip-higher); null = epsilon.")
    dual_clip_c: float | None = Field(_loss("dual_clip_c"), gt=1.0, description="Dual-clip constant for negative advantages; null = off.")
    beta: float = Field(_loss("kl_coef"), ge=0.0, description="KL(pi || pi_ref) coefficient, k3 estimator; 0 keeps no reference model.")
    entropy_coef: float = Field(_loss("entropy_coef"), ge=0.0, description="Entropy bonus coefficient.")
    loss_agg_mode: Literal[LOSS_AGG_MODES] = Field(_loss("loss_agg_mode"), description="Token-loss aggregation (verl names).")
    learning_rate: float = Field(1e-4, gt=0.0, le=1.0, description="Peak AdamW learning rate.")
    lr_scheduler: Literal["constant", "cosine"] = Field("constant", description="Learning-rate schedule after warm-up (cosine decays over max_steps or max_tokens, whichever binds first).")
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up steps.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradient clipping norm.")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each rollout batch (TRL: num_iterations).")
    mini_batch_size: int = Field(0, ge=0, description="Sequences per optimizer step (0 = the whole rollout batch).")
    micro_batch_size: int = Field(0, ge=0, description="Sequences per forward/backward pass; gradients accumulate over a mini-batch, with the same result (0 = the whole mini-batch in one pass). Also the rows per pass of the no-grad passes (reference, recomputed old log-probs).")
    update_memory_gib: float = Field(0.0, ge=0.0, description="GiB for the activations and logits of one forward/backward pass: micro_batch_size (when 0), logits_chunk_tokens (when 0) and gradient_checkpointing (when not set) are chosen to fit it, the plan is printed at the start, and a run that cannot fit stops (0 = no budget; the real-model profile sets 2).")
    train_layout: Literal["auto", "packed", "flattened"] = Field("flattened", description="Training-batch layout of every forward pass over the rollout batch (update, reference, recomputed old log-probs): flattened = one padded row per root-to-leaf path; packed = each tree's prompt and nodes once with a tree attention mask, the same loss and gradients (docs/packed.md); auto = packed when the model's attention and the run's extensions allow it, else flattened with a note.")
    shared_token_weight: Literal["per_path", "per_node", "sqrt_leaves"] = Field("per_path", description="Gradient weight of a token shared by n paths, on each path: per_path = 1 (each path trained in full, as the flattened rows are), per_node = 1/n (a node trained once, prime-rl), sqrt_leaves = 1/sqrt(n) (TreeRL); either layout.")
    pack_row_tokens: int = Field(0, ge=0, description="packed layout: tokens per packed row (a larger tree is split into segments along its leaves; 0 = auto: with sdpa's per-path attention one unpadded row per pass and no split within the micro-batch budget micro_batch_size x the longest path, with a dense mask (eager, flex_attention) 4 x the batch's longest path within that budget).")
    logits_chunk_tokens: int = Field(0, ge=0, description="Tokens whose full-vocabulary logits are materialised at once when computing log-probs (0 = auto: 0.5 GiB of float32 logits).")
    old_logp: Literal["auto", "sampler", "recompute"] = Field("auto", description="Old log-probs of the ratio: sampler = the sampler's everywhere (no extra pass; equal to a training forward only to float noise); recompute = a no-grad training forward before the updates (verl); auto = sampler on a CPU in float32, recompute otherwise. Under auto and recompute the first mini-batch of a batch uses its own forward's log-probs (exactly on-policy, ratio 1, layout-independent).")
    tis_cap: float | None = Field(None, gt=0.0, description="Truncated importance sampling: weight each token's policy-gradient term by min(pi_old / pi_behaviour, tis_cap) (needs recomputed old log-probs; null = off).")
    rollout_max_rows: int = Field(0, ge=0, description="Rows decoded at once in rollouts, IB probes and evaluation; larger rounds run in chunks (0 = all rows of a round together).")
    kv_budget_gib: float = Field(0.0, ge=0.0, description="GiB of key/value cache kept for later tree forks; past it, a fork re-encodes its prefix (0 = no limit).")

    # --- evaluation --------------------------------------------------------------------------------------------------
    eval_questions: int = Field(512, ge=1, description="Test questions per evaluation (the first N of the test split).")
    eval_k: int = Field(4, ge=1, description="Samples per test question for avg@k and pass@k.")
    eval_temperature: float = Field(1.0, gt=0.0, description="Sampling temperature of evaluation.")
    eval_top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass of evaluation (1.0 = off).")
    eval_greedy: bool = Field(True, description="Also measure greedy accuracy.")
    eval_batch_questions: int = Field(128, ge=1, description="Evaluation questions sampled together (the progress bar moves per batch).")
    eval_samples: bool = Field(False, description="Write every evaluation completion with its extracted answer and score to RUN_DIR/eval_samples/step_NNNNNN.jsonl.")

    _profile: dict = PrivateAttr(default_factory=dict)
    """Settings the real-model profile filled in (ibtpo.config.profiles), for the line printed at the start."""

    @model_validator(mode="before")
    @classmethod
    def _fill_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        plugins = data.get("plugins") or []
        import_plugins([plugins] if isinstance(plugins, str) else list(plugins))
        if data.get("task") in TASK_DEFAULTS:
            data = {**TASK_DEFAULTS[data["task"]], **data}
        return apply_preset(data, DEFAULT_ALGORITHM)

    @field_validator("algorithm", "sampler", "adv_estimator", "policy_loss")
    @classmethod
    def _registered(cls, value: str, info) -> str:
        try:
            REGISTRY_FIELDS[info.field_name].get(value)
        except RegistryError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _check_relations(self) -> "TrainConfig":
        if self.task_min_terms > self.task_max_terms:
            raise ValueError(f"task_min_terms ({self.task_min_terms}) must be <= task_max_terms ({self.task_max_terms})")
        if self.chain_min_ops > self.chain_max_ops:
            raise ValueError(f"chain_min_ops ({self.chain_min_ops}) must be <= chain_max_ops ({self.chain_max_ops})")
        if self.chain_max_operand > self.chain_max_total // 2:
            raise ValueError(f"chain_max_operand ({self.chain_max_operand}) must be <= chain_max_total // 2 "
                             f"({self.chain_max_total // 2})")
        if self.iib_keep == 1:
            raise ValueError("iib_keep: got 1; allowed: 0 (no filter) or >= 2 (a group of one trajectory has no advantage)")
        for problem in _relation_problems(self):
            raise ValueError(problem)
        return self


def group_size(cfg: TrainConfig) -> int:
    """Trajectories per question the run's sampler draws (G)."""
    return checked_shape(cfg.sampler, cfg).group_size


def _relation_problems(cfg: TrainConfig) -> list[str]:
    """Settings that contradict each other whatever the command, each as one line naming the fields."""
    out = []
    if cfg.clip_cov_lb >= cfg.clip_cov_ub:
        out.append(f"clip_cov_lb ({cfg.clip_cov_lb}) must be < clip_cov_ub ({cfg.clip_cov_ub})")
    if cfg.epsilon_high is not None and cfg.epsilon == 0 and cfg.epsilon_high == 0:
        out.append("epsilon and epsilon_high are both 0: the ratio is clipped to 1 and no update can move the policy")
    if cfg.dual_clip_c is not None and cfg.epsilon >= 1.0:
        out.append(f"dual_clip_c ({cfg.dual_clip_c}) needs epsilon < 1 (got {cfg.epsilon}): the lower clip 1 - epsilon "
                   f"must be > 0")
    if not DEVICE_PATTERN.fullmatch(cfg.device):
        out.append(f"device: got {cfg.device!r}; allowed: auto, cpu, cuda, cuda:N, mps")
    return out


def training_problems(cfg: TrainConfig) -> list[str]:
    """Rollout and update settings of a training run that contradict each other (one line each, naming the fields).

    Checked when a run is built (``Trainer``, ``ibtpo compare``), not by every command: ``ibtpo eval`` never samples
    trees, so its config may hold tree settings that would not fit its completion length."""
    out = []
    spec = SAMPLERS.get(cfg.sampler)
    tree = checked_shape(cfg.sampler, cfg)
    g, shape = tree.group_size, spec.shape_fields
    if cfg.iib_keep > g:
        out.append(f"iib_keep ({cfg.iib_keep}) must be <= the group size G={g} of sampler={cfg.sampler} ({shape})")
    if g < 2:
        out.append(f"group size G={g} ({shape}): advantages compare trajectories of a question, so G must be >= 2")
    out += checked_problems(cfg.sampler, cfg, tree)
    if cfg.mini_batch_size > cfg.questions_per_step * g:
        out.append(f"mini_batch_size ({cfg.mini_batch_size}) must be <= the rollout batch questions_per_step x G = "
                   f"{cfg.questions_per_step} x {g} = {cfg.questions_per_step * g} (0 = the whole batch)")
    return out


def check_training(cfg: TrainConfig) -> TrainConfig:
    """Raise ConfigError (one line) when the run's rollout and update settings contradict each other."""
    for problem in training_problems(cfg):
        raise ConfigError(problem)
    return cfg


# verl / TRL names accepted as aliases of ours.
ALIASES = {
    "rollout.n": "num_generations",
    "n": "num_generations",
    "clip_ratio_low": "epsilon",
    "clip_ratio": "epsilon",
    "clip_ratio_high": "epsilon_high",
    "kl_loss_coef": "beta",
    "entropy_coeff": "entropy_coef",
    "num_iterations": "ppo_epochs",
    "lr": "learning_rate",
    "max_new_tokens": "max_completion_length",
    "train_batch_size": "questions_per_step",
    "output_dir": "out_dir",
    "per_device_train_batch_size": "micro_batch_size",
    "ppo_micro_batch_size_per_gpu": "micro_batch_size",
    "ppo_mini_batch_size": "mini_batch_size",
    "tis_imp_ratio_cap": "tis_cap",
    "out": "out_dir",
}


def _allowed(field: str) -> str:
    """A short description of the values `field` accepts."""
    info = TrainConfig.model_fields[field]
    ann = info.annotation
    if getattr(ann, "__origin__", None) is Literal:
        return "one of " + ", ".join(map(str, ann.__args__))
    parts = [getattr(ann, "__name__", str(ann)).replace("NoneType", "null")]
    for m in info.metadata:
        for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(m, attr, None) is not None:
                parts.append(f"{op} {getattr(m, attr)}")
    return " ".join(parts)


def _format_error(err: ValidationError, where: dict[str, str]) -> str:
    e = err.errors()[0]
    field = str(e["loc"][0]) if e["loc"] else ""
    origin = where.get(field, "")
    prefix = f"{origin}: " if origin else ""
    if field in REGISTRY_FIELDS and e["type"] == "value_error":  # unknown or unloadable component name
        return f"{prefix}{field}: {e['msg'].removeprefix('Value error, ')}"
    if e["type"] == "extra_forbidden":
        close = difflib.get_close_matches(field, list(TrainConfig.model_fields) + list(ALIASES), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else " (see `ibtpo train --help-config`)"
        return f"{prefix}unknown config key '{field}'{hint}"
    if not field:  # a cross-field check
        return f"{prefix}{e['msg'].removeprefix('Value error, ')}"
    if e["type"] == "finite_number":
        return f"{prefix}{field}: got {e['input']!r}; allowed: a finite {_allowed(field)}"
    return f"{prefix}{field}: got {e['input']!r}; allowed: {_allowed(field)}"


def _read_text(path: Path, what: str) -> str:
    """The UTF-8 text of `path`, or a one-line ConfigError naming it."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                          f"save the file as UTF-8") from None


def _refuse_duplicate_keys(node: Any, path: Path) -> None:
    """Raise ConfigError at the second occurrence of a key in any mapping of a composed YAML document."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode) and key in seen:
                raise ConfigError(f"{path}:{line}: key '{key}' given twice (first at line {seen[key]}); keep one")
            seen.setdefault(key, line)
            _refuse_duplicate_keys(value_node, path)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(item, path)


def load_yaml_mapping(path: str | Path, what: str = "config file") -> tuple[dict[str, Any], dict[str, str]]:
    """Load a YAML mapping and remember 'file:line' of each top-level key; one-line ConfigError on a file that
    cannot be read, is not UTF-8, is not valid YAML, repeats a key, or is not a mapping."""
    path = Path(path)
    text = _read_text(path, what)
    try:
        node = yaml.compose(text)
        _refuse_duplicate_keys(node, path)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise ConfigError(f"{path}{line}: invalid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the {what} must be a mapping of key: value")
    lines = {}
    if node is not None and hasattr(node, "value"):
        for key_node, _ in node.value:
            lines[str(key_node.value)] = f"{path}:{key_node.start_mark.line + 1}"
    return data, lines


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Turn ['lr=1e-4', '--seed', '3', '--beta=0.01'] into {'lr': 1e-4, 'seed': 3, 'beta': 0.01} (YAML-typed)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            arg = arg[2:]
            if "=" not in arg:
                if i + 1 >= len(args):
                    raise ConfigError(f"option --{arg} needs a value")
                arg = f"{arg}={args[i + 1]}"
                i += 1
        if "=" not in arg:
            raise ConfigError(f"cannot read argument '{arg}': write key=value or --key value")
        key, raw = arg.split("=", 1)
        key = key.strip()
        if key not in ALIASES:
            key = key.replace("-", "_")
        try:
            out[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            out[key] = raw
        i += 1
    return out


def build_config(yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                 base: dict[str, Any] | None = None, sources: dict[str, str] | None = None) -> TrainConfig:
    """Resolve defaults <- real-model profile <- `base` <- YAML file <- overrides into a validated TrainConfig;
    raises ConfigError. The profile (``ibtpo.config.profiles``) fills fields none of the others gives when ``model`` is not
    the testbed; ``cfg._profile`` holds what it filled.

    `sources` names where an override came from, for error messages (default "command line")."""
    values: dict[str, Any] = dict(base or {})
    where: dict[str, str] = {}
    if yaml_path is not None:
        data, lines = load_yaml_mapping(yaml_path)
        given: dict[str, str] = {}
        for key, value in data.items():
            name = ALIASES.get(str(key), str(key))
            if name in given:  # e.g. lr and learning_rate in one file
                raise ConfigError(f"{lines.get(str(key), yaml_path)}: '{key}' sets {name}, which '{given[name]}' "
                                  f"already set; keep one")
            given[name] = str(key)
            values[name] = value
            where[name] = lines.get(str(key), str(yaml_path))
    for key, value in (overrides or {}).items():
        name = ALIASES.get(key, key)
        values[name] = value
        where[name] = (sources or {}).get(key, "command line")
    profile = profile_values(values)  # a real model's defaults for the fields not given (testbed: none)
    try:
        cfg = TrainConfig(**{**profile, **values})
    except ValidationError as err:
        raise ConfigError(_format_error(err, where)) from None
    cfg._profile = profile
    return cfg


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))


def config_help() -> str:
    """One line per field: name, default, doc."""
    rows = []
    for name, info in TrainConfig.model_fields.items():
        default = info.default_factory() if info.default_factory is not None else info.default
        rows.append(f"{name:<24} {default!r:<22} {info.description}")
    return "\n".join(rows)

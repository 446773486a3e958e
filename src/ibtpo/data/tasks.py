"""Where a run's questions and rewards come from: a built-in task (sum or chain), or math datasets from local files.

A *source* gives the trainer three things, whatever the data:
- ``train_problem(i)``: the i-th question of an endless training stream (``data_pos`` indexes it, so resuming is exact);
- ``test_sets``: named evaluation sets (metrics ``val/<name>/...``); the first is the primary one (the progress bar,
  the summary, ``ibtpo compare``) and its first questions are the IB probe's;
- questions ready for the policy (:class:`PromptedQuestion`): the prompt text after the prompt and chat templates.

File datasets: rows are loaded by :func:`ibtpo.data.datasets.load_questions` (layouts DAPO-Math-17K, MATH-500, AIME,
GSM8K or
a column map). The training stream walks the rows in a fresh seeded order every epoch. Without ``eval_datasets``,
``test_size`` rows (a seeded choice) are held out of training and evaluated on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ibtpo.data.datasets import DataError, Question, load_questions, render_prompt  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class PromptedQuestion:
    """A question ready for the policy: rendered prompt text, reference answer, and the columns a reward reads."""

    id: str
    prompt: str
    answer: str
    columns: dict[str, Any] = field(default_factory=dict, compare=False)

    def reward_columns(self) -> dict[str, Any]:
        """Keyword columns of the reward call: the answer, the question id (read by the error guard) and the rest."""
        return {**self.columns, "answer": self.answer, "question_id": self.id}


def build_task(cfg):
    """The built-in task generator of ``cfg.task``: sum (``ibtpo.testbed.task``), chain (``ibtpo.testbed.chain``) or
    arith (word problems for real models, ``ibtpo.data.word_problems``)."""
    from ibtpo.testbed.chain import ChainTask
    from ibtpo.testbed.task import SumTask
    from ibtpo.data.word_problems import WordProblemTask

    if cfg.task == "arith":
        return WordProblemTask(seed=cfg.task_seed, test_size=cfg.test_size)
    if cfg.task == "chain":
        return ChainTask(min_ops=cfg.chain_min_ops, max_ops=cfg.chain_max_ops, max_operand=cfg.chain_max_operand,
                         max_total=cfg.chain_max_total, seed=cfg.task_seed, test_size=cfg.test_size,
                         start_last=cfg.chain_start_last)
    return SumTask(min_terms=cfg.task_min_terms, max_terms=cfg.task_max_terms, max_value=cfg.task_max_value,
                   seed=cfg.task_seed, test_size=cfg.test_size)


class BuiltinSource:
    """A built-in task (``task=sum``, ``chain`` or ``arith``): one test split named after the task.

    The testbed tasks' prompts are used as they are. ``arith`` is for real models: its questions get
    ``prompt_template`` (default: the task's "Answer: X" instruction) and the chat template (``chat_template``)
    when a tokenizer is given."""

    def __init__(self, cfg, tokenizer=None):
        self.name = cfg.task
        self.task = build_task(cfg)
        self._render = None
        if cfg.task == "arith":
            from ibtpo.data.datasets import resolve_prompt_template
            from ibtpo.data.word_problems import INSTRUCTION

            template = resolve_prompt_template(cfg.prompt_template) or INSTRUCTION
            chat = cfg.chat_template

            def render(text: str) -> str:
                prompt = template.replace("{prompt}", text)
                return prompt if tokenizer is None else render_prompt(prompt, tokenizer, chat)

            self._render = render

    def _prompt(self, p) -> PromptedQuestion:
        return PromptedQuestion(p.id, self._render(p.prompt) if self._render else p.prompt, p.answer)

    def train_problem(self, index: int) -> PromptedQuestion:
        return self._prompt(self.task.train_problem(index))

    @cached_property
    def test_sets(self) -> dict[str, list[PromptedQuestion]]:
        return {self.name: [self._prompt(p) for p in self.task.test_problems]}


class FileSource:
    """Questions from local dataset files (``dataset`` for training, ``eval_datasets`` for evaluation)."""

    def __init__(self, cfg, tokenizer):
        self.cfg = cfg
        self._epoch: int | None = None
        self._epoch_order: list[int] = []
        self.skipped: list[str] = []
        tests: dict[str, list[PromptedQuestion]] = {}
        for spec in cfg.eval_datasets:
            name, _, path = spec.partition("=") if "=" in spec else ("", "", spec)
            loaded = self._load(path)
            self.skipped += loaded.skipped
            if (name or loaded.name) in tests:
                raise DataError(f"eval_datasets: two sets are named {name or loaded.name!r}; name them NAME=PATH")
            tests[name or loaded.name] = [self._render(q, tokenizer) for q in loaded.questions]
        rows: list[PromptedQuestion] = []
        if cfg.dataset:
            train = self._load(cfg.dataset, training=True)
            self.skipped += train.skipped
            rows = [self._render(q, tokenizer) for q in train.questions]
        if not tests:  # hold out test_size rows (a seeded choice) for evaluation
            if len(rows) <= cfg.test_size:
                raise DataError(f"dataset {cfg.dataset}: {len(rows)} questions, not more than test_size="
                                f"{cfg.test_size} to hold out for evaluation; lower test_size= or set eval_datasets=")
            order = list(range(len(rows)))
            random.Random(cfg.task_seed).shuffle(order)
            held = set(order[:cfg.test_size])
            tests[f"{train.name}_heldout"] = [rows[i] for i in sorted(held)]
            rows = [r for i, r in enumerate(rows) if i not in held]
        self.rows = rows
        self.test_sets = tests
        self.name = next(iter(tests))

    def _load(self, spec: str, training: bool = False):
        """Load one file; the layout and column options describe the training file (or, with no training file as
        in ``ibtpo eval``, the evaluation files); evaluation files next to a training file are told from their
        columns."""
        cfg = self.cfg
        path, split = spec, None
        if ":" in spec and not spec.endswith((".jsonl", ".json", ".parquet")):
            path, _, split = spec.rpartition(":")
        own = training or not cfg.dataset
        return load_questions(path, layout=cfg.dataset_layout if own else "auto",
                              prompt_column=cfg.prompt_column if own else None,
                              answer_column=cfg.answer_column if own else None,
                              id_column=cfg.id_column if own else None,
                              prompt_template=cfg.prompt_template, skip_bad_rows=cfg.skip_bad_rows, split=split)

    def _render(self, q: Question, tokenizer) -> PromptedQuestion:
        text = render_prompt(q.prompt, tokenizer, self.cfg.chat_template)
        return PromptedQuestion(q.id, text, q.answer, dict(q.columns))

    def train_problem(self, index: int) -> PromptedQuestion:
        if not self.rows:
            raise DataError("no training questions: set dataset=")
        epoch, i = divmod(index, len(self.rows))
        return self.rows[self._order(epoch)[i]]

    def _order(self, epoch: int) -> list[int]:
        if self._epoch != epoch:
            order = list(range(len(self.rows)))
            random.Random(self.cfg.seed * 1_000_003 + epoch).shuffle(order)
            self._epoch, self._epoch_order = epoch, order
        return self._epoch_order


SumSource = BuiltinSource
"""Former name of :class:`BuiltinSource` (it now serves every built-in task)."""


def build_source(cfg, tokenizer) -> BuiltinSource | FileSource:
    """The question source of a run: dataset files when ``dataset`` or ``eval_datasets`` is set, else the built-in
    task (``eval_datasets`` alone serves ``ibtpo eval``; training needs ``dataset``)."""
    return FileSource(cfg, tokenizer) if cfg.dataset or cfg.eval_datasets else BuiltinSource(cfg, tokenizer)


@dataclass
class Rewards:
    """The reward functions of a run (each a :class:`ibtpo.rewards.functions.GuardedReward`)."""

    train: Any
    """What training optimises: the answer check, plus ``format_reward_weight`` x the format reward."""
    check: Any
    """The answer check alone, what evaluation scores (a completion with reward >= 1 counts as correct)."""
    extract: Any
    """Final answer of a completion as a comparable string, for maj@k (None: no answer)."""
    formats: dict = field(default_factory=dict)
    """Extra evaluation scores, name -> fn(completion text, answer) -> bool (``task=arith``: strict and lenient)."""


def build_rewards(cfg) -> Rewards:
    """Resolve ``reward_fn`` (auto: the built-in task's exact answer check, named after the task; math when the
    questions come from dataset files, for training or evaluation) and ``format_reward_weight``."""
    from ibtpo.rewards.functions import GuardedReward, extract_math_answer, load_reward_fn, weighted_sum
    from ibtpo.testbed.task import extract_answer
    from ibtpo.data.word_problems import FORMAT_SCORES

    files = bool(cfg.dataset or cfg.eval_datasets)
    name = cfg.reward_fn if cfg.reward_fn != "auto" else ("math" if files or cfg.task == "arith" else cfg.task)
    check = load_reward_fn(name)
    train = check
    if cfg.format_reward_weight > 0:
        train = weighted_sum([check, load_reward_fn("format")], [1.0, cfg.format_reward_weight])
    limit = cfg.reward_timeout_s
    return Rewards(train=GuardedReward(train, name, on_error=cfg.reward_errors, timeout_s=limit),
                   check=GuardedReward(check, name, on_error=cfg.reward_errors, timeout_s=limit),
                   extract=extract_answer if name in ("sum", "chain") else extract_math_answer,
                   formats=dict(FORMAT_SCORES) if cfg.task == "arith" and not files else {})

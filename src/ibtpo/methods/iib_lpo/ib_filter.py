"""IIB-LPO's information-bottleneck filter and self-reward: score every trajectory of a rollout batch with the policy.

For a trajectory with completion text y, reference answer a* (the question's ``answer`` column) and the run's answer
extractor:

- the reasoning r is y cut just before its final answer (the last occurrence of the extracted answer; after the last
  ``\\boxed{`` when the extracted form is not literally in y; all of y when there is no answer), and the lead-in l is
  r's last line (e.g. ``A:`` or ``so the answer is \\boxed{``);
- I(r; a) ~ log p(a* | q, r) - log p(a* | q, l): how much the reasoning raises the likelihood of the reference
  answer, teacher-forced right where the trajectory put its own answer (nats, summed over a*'s tokens);
- I(q; r) ~ log p(r | q) - log p(r | EOS): the pointwise mutual information of question and reasoning, with a lone
  EOS token (a document boundary) as the question-free context (nats, summed over r's tokens). Longer reasoning that
  restates more of the question costs more: the "compression" side of the bottleneck.

score = I(r; a) - beta * I(q; r) (``core.ib_trajectory_score``); the filter keeps the ``keep`` best trajectories
of each question (``core.keep_top_n``) and marks the others ``info["dropped"]`` (the batch layout skips them).
Log-probs are the current policy's at the sampling temperature, without the latent offset and without gradient.
Pieces are tokenised separately and concatenated as ids (an estimate; merges across a boundary are lost).
"""

from __future__ import annotations

import torch

from ibtpo.methods.iib_lpo.core import ib_trajectory_score, keep_top_n
from ibtpo.core.correct import is_correct
from ibtpo.core.sampling import right_pad
from ibtpo.core.tree import Node, Tree
from ibtpo.core.lm import token_logprobs

Span = tuple[int, int]


def split_reasoning(text: str, answer: str | None) -> tuple[str, str]:
    """(reasoning r, lead-in l) of a completion whose extracted final answer is `answer` (see the module docstring)."""
    if answer and answer in text:
        reasoning = text[:text.rfind(answer)]
    elif "\\boxed{" in text:
        reasoning = text[:text.rfind("\\boxed{") + len("\\boxed{")]
    else:
        reasoning = text.rstrip()
    return reasoning, reasoning[reasoning.rfind("\n") + 1:]


@torch.no_grad()
def span_logprobs(model, seqs: list[list[int]], spans: list[list[Span]], pad_id: int, temperature: float,
                  chunk: int = 64) -> list[list[float]]:
    """Per sequence and span (start >= 1): the summed log-probs of tokens seqs[i][start:stop] given those before."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(seqs), chunk):
        part = seqs[i:i + chunk]
        ids, mask = right_pad(part, pad_id)
        logp = token_logprobs(model, ids.to(device), mask.to(device), temperature)[0].cpu()
        out += [[float(logp[j, start - 1:stop - 1].sum()) for start, stop in row]
                for j, row in enumerate(spans[i:i + len(part)])]
    return out


def score_trajectories(model, tokenizer, trees: list[Tree], extract, beta: float, temperature: float) -> list[Node]:
    """Set ``info["ib_answer_gain"]``, ``info["ib_question_info"]`` and ``info["ib_score"]`` on every leaf; returns
    the leaves in order. Needs an ``answer`` column on every tree."""
    def enc(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    null = [tokenizer.eos_token_id]
    with_q, with_q_spans, without_q, without_q_spans, base, base_spans = [], [], [], [], [], []
    leaves = []
    for tree in trees:
        if tree.columns.get("answer") is None:
            raise ValueError(f"IB filter: question {tree.question_id} has no 'answer' column to score against")
        a_ids, n_prompt = enc(str(tree.columns["answer"])), len(tree.prompt_ids)
        kept = tree.statistics()
        for leaf, (ids, _) in zip(kept.leaves, kept.completions):
            text = tokenizer.decode(ids, skip_special_tokens=True) if leaf.text is None else leaf.text
            reasoning, lead = split_reasoning(text, extract(text))
            r_ids, l_ids = enc(reasoning), enc(lead)
            with_q.append(tree.prompt_ids + r_ids + a_ids)  # spans: r, then a*
            with_q_spans.append([(n_prompt, n_prompt + len(r_ids)), (n_prompt + len(r_ids), len(with_q[-1]))])
            without_q.append(null + r_ids)
            without_q_spans.append([(1, 1 + len(r_ids))])
            base.append(tree.prompt_ids + l_ids + a_ids)
            base_spans.append([(n_prompt + len(l_ids), len(base[-1]))])
            leaves.append(leaf)
    pad, temp = tokenizer.pad_token_id, temperature
    r_given_q, a_given_qr = zip(*span_logprobs(model, with_q, with_q_spans, pad, temp))
    r_alone = [x for (x,) in span_logprobs(model, without_q, without_q_spans, pad, temp)]
    a_given_lead = [x for (x,) in span_logprobs(model, base, base_spans, pad, temp)]
    gain = torch.tensor(a_given_qr) - torch.tensor(a_given_lead)
    info = torch.tensor(r_given_q) - torch.tensor(r_alone)
    scores = ib_trajectory_score(gain, info, beta)
    for leaf, g, q, s in zip(leaves, gain.tolist(), info.tolist(), scores.tolist()):
        leaf.info.update(ib_answer_gain=g, ib_question_info=q, ib_score=s)
    return leaves


def apply_ib_filter(model, tokenizer, trees: list[Tree], extract, beta: float, temperature: float,
                    keep: int) -> dict[str, float]:
    """Score every trajectory and mark all but the `keep` best of each question dropped; returns ``iib/*`` metrics."""
    was_training = model.training
    model.eval()
    try:
        leaves = score_trajectories(model, tokenizer, trees, extract, beta, temperature)
    finally:
        model.train(was_training)
    groups = torch.tensor([g for g, tree in enumerate(trees) for _ in tree.leaves()])
    scores = torch.tensor([leaf.info["ib_score"] for leaf in leaves])
    kept = keep_top_n(scores, groups, keep)
    for leaf, k in zip(leaves, kept.tolist()):
        leaf.info["dropped"] = not k
    correct = torch.tensor([float(is_correct(leaf.reward)) for leaf in leaves])
    mean = lambda key: float(torch.tensor([leaf.info[key] for leaf in leaves]).mean())  # noqa: E731
    out = {"iib/answer_gain": mean("ib_answer_gain"), "iib/question_info": mean("ib_question_info"),
           "iib/score": mean("ib_score"), "iib/kept": float(kept.float().sum()) / len(trees),
           "iib/kept_accuracy": float(correct[kept].mean())}
    if bool((~kept).any()):
        out["iib/dropped_accuracy"] = float(correct[~kept].mean())
    return out

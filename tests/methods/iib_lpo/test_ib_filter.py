"""IIB-LPO's IB filter (training/ib_filter.py): reasoning split, IB scores with the testbed policy, top-N filter."""

import pytest
import torch

from ibtpo.rewards.functions import extract_math_answer
from ibtpo.core.tree import Tree, compute_p_hat
from ibtpo.testbed.task import extract_answer
from ibtpo.training.batch import flatten_paths
from ibtpo.methods.iib_lpo.ib_filter import apply_ib_filter, score_trajectories, span_logprobs, split_reasoning

BETA, TEMP = 0.05, 1.0


pytestmark = pytest.mark.usefixtures("one_thread")



def enc(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def hand_tree(tokenizer, prompt, answer, completions):
    """A depth-one tree of finished testbed-format completions, rewarded by exact match of the final answer."""
    tree = Tree(question_id=prompt, prompt_ids=enc(tokenizer, prompt), columns={"answer": answer})
    for text in completions:
        ids = enc(tokenizer, text) + [tokenizer.eos_token_id]
        leaf = tree.root.add_child(ids, [0.0] * len(ids), [0.0] * len(ids))
        leaf.finished, leaf.reward = True, float(extract_answer(text) == answer)
    compute_p_hat(tree.root)
    return tree


# 3 + 4 + 5 = 12: two correct solutions (different orders), two wrong ones (a wrong last sum; a wrong first sum)
Q1 = ("Q:3+4+5\n\n", "12", ["3+4=7\n\n7+5=12\n\nA:12", "3+4=7\n\n7+5=13\n\nA:13",
                             "4+5=9\n\n9+3=12\n\nA:12", "3+4=8\n\n8+5=13\n\nA:13"])
# 10 + 2 + 6 = 18
Q2 = ("Q:10+2+6\n\n", "18", ["10+2=12\n\n12+6=17\n\nA:17", "10+2=12\n\n12+6=18\n\nA:18",
                              "10+6=16\n\nA:16", "2+6=8\n\n8+10=18\n\nA:18"])


# ---------------------------------------------------------------------------------------------------------------------
# split_reasoning


def test_split_reasoning_testbed_text():
    text = "3+4=7\n\n7+5=12\n\nA:12"
    assert split_reasoning(text, extract_answer(text)) == ("3+4=7\n\n7+5=12\n\nA:", "A:")
    # the last occurrence of the answer is the cut, not an earlier equal intermediate sum
    assert split_reasoning("5+7=12\n\n12+0=12\n\nA:12", "12") == ("5+7=12\n\n12+0=12\n\nA:", "A:")
    assert split_reasoning("A:12", "12") == ("A:", "A:")


def test_split_reasoning_boxed_answer_not_literal():
    text = "Half of two is one over two.\nSo the answer is \\boxed{\\frac{1}{2}}"
    answer = extract_math_answer(text)
    assert answer == "1/2" and answer not in text
    reasoning, lead = split_reasoning(text, answer)
    assert reasoning == "Half of two is one over two.\nSo the answer is \\boxed{"
    assert lead == "So the answer is \\boxed{"
    # several boxes: cut after the last one
    assert split_reasoning("\\boxed{1} no, \\boxed{\\frac{1}{2}}", "1/2")[0] == "\\boxed{1} no, \\boxed{"


def test_split_reasoning_literal_boxed_answer():
    assert split_reasoning("so x = \\boxed{5}", "5") == ("so x = \\boxed{", "so x = \\boxed{")


def test_split_reasoning_without_an_answer():
    text = "3+4=7\n\n7+5=1  \n"
    assert extract_answer(text) is None
    assert split_reasoning(text, None) == ("3+4=7\n\n7+5=1", "7+5=1")
    assert split_reasoning("one line", "") == ("one line", "one line")  # an empty answer is no answer
    assert split_reasoning("A:99", "12") == ("A:99", "A:99")  # an extracted answer absent from the text, no box


# ---------------------------------------------------------------------------------------------------------------------
# span_logprobs and the IB score with the testbed policy


def test_span_logprobs_match_a_plain_forward(testbed):
    model, tok = testbed
    seqs = [enc(tok, "Q:3+4+5\n\n3+4=7"), enc(tok, "Q:1+2\n\n")]
    spans = [[(9, 14), (1, 3)], [(2, 7)]]
    got = span_logprobs(model, seqs, spans, tok.pad_token_id, TEMP)
    for seq, row, values in zip(seqs, spans, got):
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([seq])).logits[0, :-1].log_softmax(-1)
        token_lp = logp.gather(-1, torch.tensor(seq[1:])[:, None]).squeeze(-1)
        assert values == pytest.approx([float(token_lp[a - 1:b - 1].sum()) for a, b in row], abs=1e-4)
    # temperature divides the logits
    hot = span_logprobs(model, seqs[:1], spans[:1], tok.pad_token_id, 2.0)[0][0]
    with torch.no_grad():
        logp2 = (model(input_ids=torch.tensor([seqs[0]])).logits[0, :-1] / 2.0).log_softmax(-1)
    assert hot == pytest.approx(float(logp2.gather(-1, torch.tensor(seqs[0][1:])[:, None])[8:13].sum()), abs=1e-4)


def test_ib_scores_prefer_the_correct_solution(testbed):
    model, tok = testbed
    tree = hand_tree(tok, *Q1)
    leaves = score_trajectories(model, tok, [tree], extract_answer, BETA, TEMP)
    assert leaves == tree.leaves()
    gain = [leaf.info["ib_answer_gain"] for leaf in leaves]
    score = [leaf.info["ib_score"] for leaf in leaves]
    for good in (0, 2):
        for bad in (1, 3):
            assert gain[good] > gain[bad] + 1.0
            assert score[good] > score[bad]
    for leaf in leaves:
        expected = leaf.info["ib_answer_gain"] - BETA * leaf.info["ib_question_info"]
        assert leaf.info["ib_score"] == pytest.approx(expected, abs=1e-5)


def test_ib_terms_match_a_direct_computation(testbed):
    model, tok = testbed
    prompt, answer, texts = Q1
    tree = hand_tree(tok, prompt, answer, texts[:2])
    score_trajectories(model, tok, [tree], extract_answer, BETA, TEMP)
    leaf = tree.leaves()[1]  # the wrong one: its reasoning ends "...=13\n\nA:" and a* = 12 is scored after it
    q, r, lead, a = enc(tok, prompt), enc(tok, "3+4=7\n\n7+5=13\n\nA:"), enc(tok, "A:"), enc(tok, answer)
    pad, eos = tok.pad_token_id, tok.eos_token_id
    (a_qr,), (a_ql,) = span_logprobs(model, [q + r + a, q + lead + a],
                                     [[(len(q + r), len(q + r + a))], [(len(q + lead), len(q + lead + a))]], pad, TEMP)
    assert leaf.info["ib_answer_gain"] == pytest.approx(a_qr - a_ql, abs=1e-4)
    (r_q,), (r_0,) = span_logprobs(model, [q + r, [eos] + r], [[(len(q), len(q + r))], [(1, 1 + len(r))]], pad, TEMP)
    assert leaf.info["ib_question_info"] == pytest.approx(r_q - r_0, abs=1e-4)
    assert leaf.info["ib_score"] == pytest.approx(a_qr - a_ql - BETA * (r_q - r_0), abs=1e-4)


def test_ib_gain_is_zero_without_reasoning(testbed):
    """A bare "A:12" has the lead-in as its whole reasoning: log p(a* | q, r) and log p(a* | q, l) coincide."""
    model, tok = testbed
    tree = hand_tree(tok, "Q:3+4+5\n\n", "12", ["A:12", "A:7"])
    score_trajectories(model, tok, [tree], extract_answer, BETA, TEMP)
    assert [leaf.info["ib_answer_gain"] for leaf in tree.leaves()] == pytest.approx([0.0, 0.0], abs=1e-5)


def test_score_needs_an_answer_column(testbed):
    model, tok = testbed
    tree = hand_tree(tok, *Q1)
    tree.columns = {}
    with pytest.raises(ValueError, match="answer"):
        score_trajectories(model, tok, [tree], extract_answer, BETA, TEMP)


# ---------------------------------------------------------------------------------------------------------------------
# apply_ib_filter


def test_filter_keeps_the_best_per_question_and_the_batch_skips_the_rest(testbed):
    model, tok = testbed
    trees = [hand_tree(tok, *Q1), hand_tree(tok, *Q2)]
    model.train()  # the filter scores in eval mode and restores the mode
    try:
        metrics = apply_ib_filter(model, tok, trees, extract_answer, BETA, TEMP, keep=2)
        assert model.training
    finally:
        model.eval()
    for tree in trees:
        leaves = tree.leaves()
        kept = [leaf for leaf in leaves if not leaf.info["dropped"]]
        dropped = [leaf for leaf in leaves if leaf.info["dropped"]]
        assert len(kept) == 2 and len(dropped) == 2
        assert min(x.info["ib_score"] for x in kept) > max(x.info["ib_score"] for x in dropped)
        assert all(x.reward == 1.0 for x in kept) and all(x.reward == 0.0 for x in dropped)  # here: the correct ones
    assert metrics["iib/kept"] == 2.0
    assert metrics["iib/kept_accuracy"] == 1.0 and metrics["iib/dropped_accuracy"] == 0.0
    leaves = [leaf for tree in trees for leaf in tree.leaves()]
    for key in ("answer_gain", "question_info", "score"):
        assert metrics[f"iib/{key}"] == pytest.approx(sum(x.info[f"ib_{key}"] for x in leaves) / len(leaves), abs=1e-4)
    batch = flatten_paths(trees, tok.pad_token_id)
    assert batch.size == 4 and batch.group_ids.tolist() == [0, 0, 1, 1]
    assert all(not leaf.info["dropped"] for leaf in batch.leaves)
    assert batch.rewards.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert batch.extras == {}  # no extension given: no per-row extras


def test_filter_with_keep_zero_keeps_everything(testbed):
    model, tok = testbed
    trees = [hand_tree(tok, *Q1)]
    metrics = apply_ib_filter(model, tok, trees, extract_answer, BETA, TEMP, keep=0)
    assert not any(leaf.info["dropped"] for leaf in trees[0].leaves())
    assert metrics["iib/kept"] == 4.0 and "iib/dropped_accuracy" not in metrics
    assert metrics["iib/kept_accuracy"] == 0.5
    assert flatten_paths(trees, tok.pad_token_id).size == 4

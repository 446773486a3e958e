"""Question sources: the file training stream (every row once per epoch, a new seeded order each epoch, exact from
data_pos), the held-out split, evaluation set names, chat rendering, and the rewards a run resolves."""

from pathlib import Path

import pytest

from ibtpo.config.schema import build_config
from ibtpo.data.datasets import DataError
from ibtpo.data.tasks import SumSource, build_rewards, build_source, render_prompt
from ibtpo.core.tiny_models import build_chat_tokenizer

FIXTURES = Path(__file__).parents[1] / "fixtures" / "math"


@pytest.fixture(scope="module")
def chat_tok():
    return build_chat_tokenizer()


def _source(chat_tok, **over):
    return build_source(build_config(None, {"dataset": str(FIXTURES / "dapo.jsonl"), **over}), chat_tok)


def test_training_stream_covers_every_row_each_epoch_in_a_new_seeded_order(chat_tok):
    src = _source(chat_tok, eval_datasets=[str(FIXTURES / "aime.jsonl")])
    n = len(src.rows)
    epochs = [[src.train_problem(e * n + i).id for i in range(n)] for e in range(3)]
    assert all(sorted(ids) == sorted(q.id for q in src.rows) for ids in epochs)
    assert len({tuple(ids) for ids in epochs}) > 1  # reshuffled between epochs
    again = _source(chat_tok, eval_datasets=[str(FIXTURES / "aime.jsonl")])
    assert [again.train_problem(i).id for i in range(7, 12)] == [x for e in epochs for x in e][7:12]  # from data_pos
    other_seed = _source(chat_tok, eval_datasets=[str(FIXTURES / "aime.jsonl")], seed=1)
    assert [other_seed.train_problem(i).id for i in range(n)] != epochs[0]


def test_held_out_split_is_disjoint_from_training(chat_tok):
    src = _source(chat_tok, test_size=2)
    held = src.test_sets["dapo_heldout"]
    assert src.name == "dapo_heldout" and len(held) == 2 and len(src.rows) == 3
    assert not {q.id for q in held} & {q.id for q in src.rows}
    with pytest.raises(DataError, match="5 questions, not more than test_size=5"):
        _source(chat_tok, test_size=5)


def test_eval_sets_are_named_and_rendered(chat_tok):
    src = _source(chat_tok, eval_datasets=[str(FIXTURES / "math500.jsonl"), f"g={FIXTURES / 'gsm8k.jsonl'}"])
    assert list(src.test_sets) == ["math500", "g"] and src.name == "math500"
    row = src.train_problem(0)
    assert row.prompt.startswith("<|im_start|>") and row.reward_columns()["question_id"] == row.id
    assert row.reward_columns()["data_source"] == "fixture_dapo"  # other columns reach the reward function
    gsm = src.test_sets["g"][0]
    assert gsm.answer.isdigit() and gsm.prompt.startswith("<|im_start|>")  # a chat tokenizer: strings too
    with pytest.raises(DataError, match="two sets are named 'math500'"):
        _source(chat_tok, eval_datasets=[str(FIXTURES / "math500.jsonl")] * 2)


def test_render_prompt_modes(chat_tok):
    msgs = ({"role": "user", "content": "What is 2+2?"},)
    assert render_prompt("plain", chat_tok, "never") == "plain"
    assert render_prompt("plain", chat_tok, "auto") == render_prompt("plain", chat_tok, "always")
    assert render_prompt("plain", chat_tok, "always") == "<|im_start|>user\nplain<|im_end|>\n<|im_start|>assistant\n"
    assert render_prompt(msgs, chat_tok, "auto").startswith("<|im_start|>user\nWhat is 2+2?")
    with pytest.raises(DataError, match="chat_template=never"):
        render_prompt(msgs, chat_tok, "never")


def test_rewards_resolve_by_task_and_format_weight():
    sum_rewards = build_rewards(build_config(None, {}))
    assert sum_rewards.check.name == "sum"
    testbed = SumSource(build_config(None, {"test_size": 7}))
    assert list(testbed.test_sets) == ["sum"] and len(testbed.test_sets["sum"]) == 7
    math = build_rewards(build_config(None, {"dataset": "x.jsonl", "format_reward_weight": 0.5}))
    completions = ["so \\boxed{4}", "it is 5", "\\boxed{5}"]
    assert math.train(["q"] * 3, completions, None, answer=["4"] * 3) == [1.5, 0.0, 0.5]
    assert math.check(["q"] * 3, completions, None, answer=["4"] * 3) == [1.0, 0.0, 0.0]
    assert math.extract("so \\boxed{0.5}") == math.extract("\\boxed{\\frac{1}{2}}")
    assert build_rewards(build_config(None, {"eval_datasets": ["x.jsonl"]})).check.name == "math"  # ibtpo eval


def test_chain_task_source_and_reward():
    cfg = build_config(None, {"task": "chain", "test_size": 8})
    src = build_source(cfg, None)
    from ibtpo.testbed.chain import ChainTask

    assert src.name == "chain" and [q.prompt for q in src.test_sets["chain"]] == \
        [p.prompt for p in ChainTask(test_size=8).test_problems]
    q = src.train_problem(3)
    assert q.prompt == ChainTask(test_size=8).train_problem(3).prompt
    rewards = build_rewards(cfg)
    gold = ChainTask(test_size=8).train_problem(3)
    assert rewards.check([q.prompt, q.prompt], [gold.solution, "A:-1"], None, answer=[q.answer] * 2) == [1.0, 0.0]
    assert rewards.extract(gold.solution) == gold.answer

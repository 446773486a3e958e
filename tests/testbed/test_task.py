from ibtpo.testbed.task import STEP_DELIMITER, SumTask, extract_answer, sum_reward


def test_solution_is_steps_ending_in_checked_answer():
    task = SumTask()
    for p in task.test_problems[:50]:
        terms = [int(x) for x in p.prompt.removeprefix("Q:").strip().split("+")]
        steps = p.solution.split(STEP_DELIMITER)
        assert len(steps) == len(terms)  # n-1 additions + the answer
        assert steps[-1] == f"A:{sum(terms)}" and p.answer == str(sum(terms))
        used = []
        for s in steps[:-1]:
            lhs, rhs = s.split("=")
            a, b = map(int, lhs.split("+"))
            assert a + b == int(rhs)
            used.append(b)
        assert sorted(used + [int(steps[0].split("+")[0])]) == sorted(terms)
        assert sum_reward([p.prompt], [p.solution], answer=[p.answer]) == [1.0]


def test_splits_are_disjoint_and_reproducible():
    task = SumTask(test_size=300)
    test_prompts = {p.prompt for p in task.test_problems}
    train = [task.train_problem(i) for i in range(3000)]
    assert not test_prompts & {p.prompt for p in train}
    assert [p.prompt for p in SumTask(test_size=300).test_problems] == [p.prompt for p in task.test_problems]
    assert SumTask(seed=1).train_problem(0) != SumTask(seed=2).train_problem(0)


def test_reward_is_exact_on_final_answer():
    assert extract_answer("3+4=7\n\nA:7") == "7"
    assert extract_answer("3+4=7\n\nA:7x") is None
    assert extract_answer("3+4=7") is None
    assert sum_reward(["q"] * 3, ["A:7", "A:70", "7"], answer=["7"] * 3) == [1.0, 0.0, 0.0]


def test_char_tokenizer_roundtrip_and_specials(tokenizer, tmp_path):
    text = "Q:12+7\n\n12+7=19\n\nA:19"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)  # one token per character: "\n\n" is two tokens
    assert tokenizer.decode(ids) == text
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text, add_special_tokens=False)["input_ids"] == ids and again.eos_token == "<eos>"

from ibtpo.core.steps import StepSplitter


class FakeTokenizer:
    """Maps ids to fixed strings (multi-character tokens, as a BPE vocabulary has)."""

    def __init__(self, vocab):
        self.vocab = vocab

    def decode(self, ids, **_):
        return "".join(self.vocab[i] for i in ids)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_testbed_solution_splits_into_real_steps(tokenizer):
    text = "15+3=18\n\n18+9=27\n\n27+7=34\n\nA:34"
    ids = _ids(tokenizer, text) + [tokenizer.eos_token_id]
    steps = StepSplitter(tokenizer).split(ids)
    texts = [tokenizer.decode(s) for s in steps]
    assert texts == ["15+3=18\n\n", "18+9=27\n\n", "27+7=34\n\n", "A:34" + tokenizer.eos_token]
    assert sum(steps, []) == ids


def test_no_delimiter_is_one_step_and_empty_input(tokenizer):
    ids = _ids(tokenizer, "A:12")
    sp = StepSplitter(tokenizer)
    assert sp.split(ids) == [ids]
    assert sp.boundaries([]) == [] and sp.boundaries(ids, len(ids)) == []


def test_short_steps_merge_into_previous_and_first_into_next(tokenizer):
    sp = StepSplitter(tokenizer, min_step_tokens=3)
    ids = _ids(tokenizer, "1+2=3\n\nx\n\n9")  # "x\n\n" is 3 tokens (kept), final "9" is 1 token (merged)
    assert [tokenizer.decode(s) for s in sp.split(ids)] == ["1+2=3\n\n", "x\n\n9"]
    ids = _ids(tokenizer, "\n\n1+2=3\n\n")  # a lone delimiter first: joins the next step
    assert [tokenizer.decode(s) for s in sp.split(ids)] == ["\n\n1+2=3\n\n"]
    sp1 = StepSplitter(tokenizer, min_step_tokens=1)
    assert [tokenizer.decode(s) for s in sp1.split(ids)] == ["\n\n", "1+2=3\n\n"]


def test_triple_newline_and_custom_delimiter(tokenizer):
    sp = StepSplitter(tokenizer, min_step_tokens=1)
    ids = _ids(tokenizer, "ab\n\n\ncd")
    assert [tokenizer.decode(s) for s in sp.split(ids)] == ["ab\n\n", "\ncd"]
    sp = StepSplitter(tokenizer, delimiter=";", min_step_tokens=1)
    assert [tokenizer.decode(s) for s in sp.split(_ids(tokenizer, "a;b;c"))] == ["a;", "b;", "c"]


def test_delimiter_straddling_a_fork_point(tokenizer):
    sp = StepSplitter(tokenizer, min_step_tokens=1)
    ids = _ids(tokenizer, "1+2=3\n\n4+5=9")
    fork = ids.index(_ids(tokenizer, "\n")[0]) + 1  # after the first "\n"
    # the continuation starts with the second "\n", which completes the delimiter: it ends a step of its own
    ends = sp.boundaries(ids, fork)
    assert ends[0] == fork + 1 and ends[-1] == len(ids)


def test_multi_character_tokens():
    tok = FakeTokenizer({0: "Step", 1: " one.", 2: "\n\n", 3: "Two", 4: ".\n\nThe", 5: " end", 6: "\n", 7: "\nX"})
    sp = StepSplitter(tok, min_step_tokens=1)
    assert sp.boundaries([0, 1, 2, 3, 4, 5]) == [3, 5, 6]  # the step ends after the token holding the delimiter
    assert sp.boundaries([0, 6, 7, 5]) == [3, 4]  # "\n" + "\nX": the delimiter ends inside token 7


def test_boundaries_after_a_fork_agree_with_one_pass(tokenizer):
    sp = StepSplitter(tokenizer, min_step_tokens=1)
    ids = _ids(tokenizer, "ab\n\n\ncd\n\nef\n\n\n\ngh")
    full = sp.raw_boundaries(ids)
    for start in range(len(ids)):
        assert sp.raw_boundaries(ids, start) == [e for e in full if e > start]

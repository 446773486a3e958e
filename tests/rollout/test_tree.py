from ibtpo.rollout.tree import Tree


def test_paths_completion_and_token_accounting():
    t = Tree(question_id="q", prompt_ids=[9, 9])
    a = t.root.add_child([1, 2], [-0.1, -0.2], [0.5, 0.6])
    a1 = a.add_child([3], [-0.3], [0.7])
    a2 = a.add_child([4, 5], [-0.4, -0.5], [0.8, 0.9])
    b = t.root.add_child([6], [-0.6], [1.0])
    assert [n.path for n in t.nodes()] == ["0", "0/0", "0/1", "1"]
    assert t.leaves() == [a1, a2, b]
    assert Tree.completion(a2) == ([1, 2, 4, 5], [-0.1, -0.2, -0.4, -0.5], [0.5, 0.6, 0.8, 0.9])
    assert t.new_tokens == 6  # the shared prefix [1, 2] counts once
    d = t.to_dict()
    assert [n["path"] for n in d["nodes"]] == ["0", "0/0", "0/1", "1"]

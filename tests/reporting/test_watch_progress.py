"""Early warnings of runs without a learning signal or with cut completions, and the budget the bar follows."""

from ibtpo.reporting.progress import binding_budget
from ibtpo.reporting.watch import EarlyWarnings


def test_warns_once_after_the_window_when_groups_are_flat_or_cut():
    w = EarlyWarnings(cap=48, window=3)
    flat = {"eff_rate": 0.1, "response_length/clip_ratio": 0.9}
    assert w.after_step(flat) == [] and w.after_step(flat) == []
    lines = w.after_step(flat)
    assert len(lines) == 2 and "90% of the question groups had all-equal rewards" in lines[0]
    assert "max_completion_length=48" in lines[1]
    assert w.after_step(flat) == []  # once


def test_no_warning_for_a_healthy_run_and_a_short_run_is_judged_at_its_end():
    w = EarlyWarnings(cap=48, window=3)
    for _ in range(3):
        assert w.after_step({"eff_rate": 0.6, "response_length/clip_ratio": 0.1}) == []
    short = EarlyWarnings(cap=48, window=3)
    assert len(short.after_step({"eff_rate": 0.0, "response_length/clip_ratio": 0.0}, last=True)) == 1


def test_a_tree_that_forks_only_at_the_root_is_reported():
    w = EarlyWarnings(cap=48, window=2, tree=True)
    ok = {"eff_rate": 0.5, "response_length/clip_ratio": 0.0}
    assert w.after_step({**ok, "rollout/tree_depth": 1.0}) == []
    (line,) = w.after_step({**ok, "rollout/tree_depth": 1.0})
    assert "forked only at the root" in line and "'\\n\\n'" in line
    deep = EarlyWarnings(cap=48, window=2, tree=True)
    assert deep.after_step({**ok, "rollout/tree_depth": 1.0}) == deep.after_step({**ok, "rollout/tree_depth": 3.0}) == []


def test_eval_cap_warning_names_the_set():
    w = EarlyWarnings(cap=48)
    assert w.after_eval({"val/gsm/cap_hit_rate": 0.2}) == []
    (line,) = w.after_eval({"val/gsm/cap_hit_rate": 0.9, "val/aime/cap_hit_rate": 0.1})
    assert "gsm 90%" in line and "aime" not in line


def test_the_bar_follows_the_budget_that_stops_the_run():
    assert binding_budget(100_000, 1_500_000, 0, 0, 6144) == "tokens"
    assert binding_budget(5, 1_500_000, 0, 0, 6144) == "steps"  # 5 steps cannot generate 1.5M tokens
    assert binding_budget(10, 0, 0, 0, 6144) == "steps"  # no token budget
    assert binding_budget(1000, 100_000, 4, 800, 6144) == "tokens"  # 200 tokens/step x 1000 steps >= 100k
    assert binding_budget(100, 100_000, 4, 800, 6144) == "steps"

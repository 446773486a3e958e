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


def test_log_lines_every_n_steps_with_eta_and_forced_lines():
    from ibtpo.reporting.progress import LogLines

    out, t = [], [0.0]
    lines = LogLines(out.append, every=5, clock=lambda: t[0])
    for step in range(1, 11):
        t[0] = 2.0 * step
        lines.step(step, 10, 100 * step, 0, "steps", {"reward/mean": 0.25, "perf/tokens_per_s": 1234.0},
                   acc=0.5 if step == 7 else None, force=step == 10)
    assert [x.split()[1] for x in out] == ["1/10", "5/10", "7/10", "10/10"]
    assert out[1] == "step 5/10  tokens 500  reward 0.250  tok/s 1,234  elapsed 0m10s  ETA 0m10s"
    assert "acc 0.500" in out[2] and out[3].endswith("ETA 0m00s")


def test_log_lines_by_time_and_token_budget_eta():
    from ibtpo.reporting.progress import LogLines

    out, t = [], [0.0]
    lines = LogLines(out.append, every=0, every_s=30.0, clock=lambda: t[0])
    for step, now in ((1, 10.0), (2, 20.0), (3, 35.0), (4, 50.0), (5, 70.0)):
        t[0] = now
        lines.step(step, 100, 1000 * step, 10_000, "tokens", {})
    assert [x.split()[1] for x in out] == ["1/100", "4/100"]  # the first, then 30 s after the last line
    assert "tokens 4,000/10,000" in out[1] and out[1].endswith("ETA 1m15s")  # 50 s for 40% of the tokens


def test_a_run_logged_to_a_file_prints_plain_progress_lines(tmp_path):
    import io

    from rich.console import Console

    from ibtpo.config.schema import build_config
    from ibtpo.training.run import train

    buf = io.StringIO()
    cfg = build_config(overrides={"out_dir": str(tmp_path / "run"), "max_steps": 3, "questions_per_step": 2,
                                  "num_generations": 2, "eval_every": 2, "eval_questions": 2, "eval_k": 1,
                                  "progress_every": 2, "tensorboard": False, "plots": False, "threads": 1})
    train(cfg, console=Console(file=buf, force_terminal=False, width=200))
    steps = [line.split()[1] for line in buf.getvalue().splitlines() if line.startswith("step ")]
    assert steps == ["0/3", "1/3", "2/3", "3/3"], buf.getvalue()
    assert "acc " in [x for x in buf.getvalue().splitlines() if x.startswith("step 2/3")][0]

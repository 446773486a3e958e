"""`ibtpo compare`: runs at a token budget, reused or resumed on a second call; the report's numbers."""

import json

import pytest

from ibtpo.cli import main
from ibtpo.compare import ci95, tokens_to_reach


def test_tokens_to_reach_interpolates_and_ci95():
    evals = [(0, 0.40), (100, 0.50), (200, 0.60)]
    assert tokens_to_reach(evals, 0.55) == pytest.approx(150)
    assert tokens_to_reach(evals, 0.35) == 0
    assert tokens_to_reach(evals, 0.61) is None
    assert ci95([1.0]) == 0.0 and ci95([1.0, 3.0]) == pytest.approx(12.706 * 2 ** 0.5 / 2 ** 0.5)


def test_compare_runs_reports_and_resumes(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "cmp"
    shared = [f"model={tiny_model_dir}", "questions_per_step=2", "num_generations=2", "max_completion_length=10",
              "eval_questions=4", "eval_k=2", "eval_every=2", "tree_b0=2", "tree_l=2", "tree_min_room=2",
              "ib_probe_questions=2", "progress=false", "tensorboard=false", "plots=false"]
    args = ["compare", "--presets", "grpo", "ib_tpo", "--seeds", "0", "1", "--tokens", "60", "--out", str(out)]
    assert main([*args, *shared]) == 0
    for preset in ("grpo", "ib_tpo"):
        for seed in (0, 1):
            summary = json.loads((out / "runs" / preset / f"seed{seed}" / "summary.json").read_text())
            assert summary["generated_tokens"] >= 60  # stopped on the token budget, not on steps
            assert summary["generated_tokens"] - 60 < 2 * 12 * 10  # within one step of it
    report = (out / "report.md").read_text()
    assert "| grpo | 2 |" in report and "| ib_tpo | 2 |" in report
    data = json.loads((out / "report.json").read_text())
    ib_row = next(r for r in data["rows"] if r["preset"] == "ib_tpo")
    assert len(ib_row["diff_vs_baseline"]) == 2 and (out / "plots" / "compare_vs_tokens.png").exists()
    # an interrupted comparison: one run lost its summary (it had a checkpoint), another never started
    (out / "runs" / "ib_tpo" / "seed1" / "summary.json").unlink()
    capsys.readouterr()
    variants = tmp_path / "v.yaml"
    variants.write_text("ib_lambda0: {algorithm: ib_tpo, ib_tpo_lambda: 0.0}\n")
    assert main([*args, "--presets", "grpo", "ib_tpo", "ib_lambda0", "--variants", str(variants), *shared]) == 0
    err = capsys.readouterr().err
    assert err.count("finished earlier, reused") == 3 and "resuming its last checkpoint" in err
    run = out / "runs" / "ib_lambda0" / "seed1"
    assert (run / "summary.json").exists() and "ib_tpo_lambda: 0.0" in (run / "config.yaml").read_text()


def test_compare_bad_input_is_one_line(tmp_path, capsys):
    assert main(["compare", "--presets", "grpo", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main(["compare", "seed=3", "--out", str(tmp_path)]) == 2
    assert "seed: set by compare itself" in capsys.readouterr().err
    assert main(["compare", "lerning_rate=1", "--out", str(tmp_path)]) == 2
    assert "did you mean 'learning_rate'" in capsys.readouterr().err
    bad = tmp_path / "v.yaml"
    bad.write_text("x: {algorithm: nope}\n")
    assert main(["compare", "--variants", str(bad), "--presets", "x", "--out", str(tmp_path)]) == 2
    assert "x: 'algorithm' must be one of" in capsys.readouterr().err
    bad.write_text("x: {algorithm: grpo, ib_tpo_lambda: -1}\n")
    assert main(["compare", "--variants", str(bad), "--presets", "x", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"ibtpo: error: {bad}: x: ib_tpo_lambda: got -1")


def test_compare_runs_jobs_in_parallel_processes(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "cmp"
    shared = [f"model={tiny_model_dir}", "questions_per_step=2", "num_generations=2", "max_completion_length=10",
              "eval_questions=4", "eval_k=2", "ib_probe_every=0", "threads=1", "tensorboard=false", "plots=false"]
    args = ["compare", "--presets", "grpo", "--seeds", "0", "1", "--tokens", "40", "--out", str(out), "--jobs", "2"]
    assert main([*args, *shared]) == 0
    err = capsys.readouterr().err
    assert err.count("finished:") == 2 and "(2/2 of this call)" in err
    sequential = tmp_path / "seq"
    assert main(["compare", "--presets", "grpo", "--seeds", "1", "--tokens", "40", "--out", str(sequential),
                 *shared]) == 0
    parallel = json.loads((out / "runs" / "grpo" / "seed1" / "summary.json").read_text())
    alone = json.loads((sequential / "runs" / "grpo" / "seed1" / "summary.json").read_text())
    assert parallel["final"] == alone["final"] and parallel["steps"] == alone["steps"]  # same run either way
    assert main([*args[:-1], "0", *shared]) == 2 and "--jobs: must be >= 1" in capsys.readouterr().err

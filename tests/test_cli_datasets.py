"""The real-data path through the CLI on a tiny random Qwen3 with a chat tokenizer: train on DAPO-layout chat prompts
with LoRA, evaluate on MATH-500 and GSM8K layouts, reward-function failures, and one-line errors for bad input."""

import json
from pathlib import Path

import pytest

from ibtpo.cli import main
from ibtpo.core.tiny_models import save_tiny_model

FIXTURES = Path(__file__).parent / "fixtures" / "math"
SMALL = ["questions_per_step=5", "num_generations=3", "max_completion_length=8", "eval_k=2", "eval_questions=3",
         "progress=false", "tensorboard=false", "plots=false", "ib_probe_every=0"]


def raises_on_54(prompts, completions, completion_ids=None, answer=None, **_):
    """A user reward function that breaks on one question (reference answer 54)."""
    if "54" in answer:
        raise ValueError("cannot score this one")
    return [float(len(c) % 2) for c in completions]


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    return save_tiny_model("qwen3", tmp_path_factory.mktemp("qwen3"))


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_on_chat_data_with_lora_then_eval_per_dataset(tmp_path, qwen3_dir, capsys):
    run = tmp_path / "run"
    evals = f"eval_datasets=[{FIXTURES / 'math500.jsonl'},gsm={FIXTURES / 'gsm8k.jsonl'}]"
    assert main(["train", f"model={qwen3_dir}", f"dataset={FIXTURES / 'dapo.jsonl'}", evals, "algorithm=ib_tpo",
                 "tree_b0=2", "tree_l=2", "tree_min_room=2", "lora_rank=4", "max_steps=2", "max_tokens=0",
                 "reward_fn=tests.training.test_models:parity_reward", f"out_dir={run}", *SMALL]) == 0
    recs = _metrics(run)
    assert {"val/math500/avg@2", "val/math500/maj@2", "val/gsm/pass@2", "val/gsm/greedy_acc"} <= set(recs[-1])
    assert recs[-1]["reward/errors"] == 0 and recs[-1]["rollout/trajectories_per_question"] == 3
    ckpt = run / "checkpoints" / "step-000002"
    assert (ckpt / "adapter_config.json").exists()
    capsys.readouterr()
    out = tmp_path / "eval.json"
    assert main(["eval", f"model={run}", evals, "eval_k=3", "max_completion_length=8", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["datasets"]) == {"math500", "gsm"} and res["datasets"]["gsm"]["questions"] == 4
    assert res["reward_fn"] == "math"  # auto: files are checked with math-verify, not the testbed verifier
    for r in res["datasets"].values():
        assert {"avg@3", "pass@3", "maj@3", "greedy_acc", "response_length"} <= set(r)
        assert 0 <= r["avg@3"] <= r["pass@3"] <= 1
    table = capsys.readouterr().out
    assert "math500" in table and "gsm" in table and "maj@3" in table


def test_reward_function_errors_fail_or_count(tmp_path, qwen3_dir, capsys):
    common = [f"model={qwen3_dir}", f"dataset={FIXTURES / 'dapo.jsonl'}", f"eval_datasets=[{FIXTURES / 'aime.jsonl'}]",
              "algorithm=grpo", "reward_fn=tests.test_cli_datasets:raises_on_54", "max_steps=1", "max_tokens=0",
              *SMALL]
    assert main(["train", *common, f"out_dir={tmp_path / 'a'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert [ln for ln in err.splitlines() if ln.startswith("ibtpo: error")] == [err.splitlines()[-1]]  # one line
    assert "reward function tests.test_cli_datasets:raises_on_54 raised on question dapo-fx-1" in err
    assert "ValueError: cannot score this one" in err
    assert main(["train", *common, "reward_errors=zero", f"out_dir={tmp_path / 'b'}"]) == 0
    step = _metrics(tmp_path / "b")[1]
    assert step["reward/errors"] == 3  # the question's 3 completions scored 0; the others kept their scores


def test_skip_bad_rows_trains_on_the_good_ones(tmp_path, qwen3_dir, capsys):
    run = tmp_path / "run"
    args = ["train", f"model={qwen3_dir}", f"dataset={FIXTURES / 'bad_rows.jsonl'}",
            f"eval_datasets=[{FIXTURES / 'aime.jsonl'}]", "algorithm=grpo", "max_steps=1", "max_tokens=0",
            f"out_dir={run}", *SMALL]
    assert main(args) == 2
    assert f"{FIXTURES / 'bad_rows.jsonl'}:2: missing field 'answer'" in capsys.readouterr().err
    assert main([*args, "skip_bad_rows=true"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_rows"]["count"] >= 4 and summary["skipped_rows"]["first"][0].endswith(
        "bad_rows.jsonl:2: missing field 'answer' (fields: level, problem, unique_id)")


@pytest.mark.parametrize("args, message", [
    (["dataset=nowhere.jsonl"], "nowhere.jsonl"),
    ([f"dataset={FIXTURES / 'dapo.jsonl'}", "chat_template=never"], "chat_template=never"),
    ([f"dataset={FIXTURES / 'dapo.jsonl'}", "reward_fn=no_such_module:fn"], "no_such_module"),
    ([f"dataset={FIXTURES / 'dapo.jsonl'}", "dataset_layout=gsm8k"], "dapo.jsonl:1:"),
    ([f"eval_datasets=[{FIXTURES / 'aime.jsonl'}]"], "eval_datasets: set dataset= too"),
    (["model=someone/uncached-model"], "someone/uncached-model"),
])
def test_bad_real_data_input_is_a_one_line_error(tmp_path, qwen3_dir, capsys, args, message):
    model = [] if any(a.startswith("model=") for a in args) else [f"model={qwen3_dir}"]
    assert main(["train", *model, *args, "max_steps=1", f"out_dir={tmp_path / 'r'}", *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("algorithm", ["ib_tpo", "grpo"])
def test_paper_recipe_config_trains_on_tiny_stand_ins(tmp_path, qwen3_dir, algorithm):
    """The shipped Qwen3-1.7B / DAPO-Math-17K recipe, with the model and data swapped for tiny local stand-ins and
    the lengths shrunk: every other key of the recipe is used as written (bf16, checkpointing, top-p, mini-batches)."""
    recipe = Path(__file__).parents[1] / "src" / "ibtpo" / "configs" / "qwen3_1.7b_dapo_ib_tpo.yaml"
    run = tmp_path / "run"
    assert main(["train", str(recipe), f"algorithm={algorithm}", f"model={qwen3_dir}",
                 f"dataset={FIXTURES / 'dapo.jsonl'}", f"eval_datasets=[math500={FIXTURES / 'math500.jsonl'}]",
                 "max_completion_length=8", "tree_min_room=2", "questions_per_step=2", "mini_batch_size=8",
                 "max_steps=1", "eval_k=2", "threads=2", "device=cpu", f"out_dir={run}", "progress=false",
                 "plots=false", "tensorboard=false"]) == 0
    recs = _metrics(run)
    assert recs[-1]["rollout/trajectories_per_question"] == (12 if algorithm == "ib_tpo" else 8)
    assert "val/math500/avg@2" in recs[-1] and "probe/ib/score_mean" in recs[0]

"""Inspecting what a model wrote: eval --samples, score's samples.jsonl, cap-hit rate, stop ids, prompt lines."""

import json
from pathlib import Path

import pytest

from ibtpo.cli import main
from ibtpo.data.datasets import PROMPT_PRESETS, describe_prompting, load_questions
from ibtpo.core.sampling import SamplingParams
from ibtpo.evaluation.heldout import evaluate
from ibtpo.rollout.spec import RolloutSpec
from ibtpo.training.models import load_policy
from ibtpo.rewards.functions import GuardedReward, math_accuracy
from ibtpo.config.schema import build_config
from ibtpo.data.tasks import build_source
from ibtpo.core.tiny_models import save_tiny_model

FIXTURES = Path(__file__).parent / "fixtures" / "math"
GSM = FIXTURES / "gsm8k.jsonl"


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return save_tiny_model("qwen3", tmp_path_factory.mktemp("chat"))


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_eval_samples_hold_every_completion_and_the_cap_rate(chat_dir, tmp_path, capsys, one_thread):
    out = tmp_path / "s.jsonl"
    assert main(["eval", f"model={chat_dir}", f"eval_datasets=[{GSM}]", "eval_questions=3", "eval_k=2",
                 "max_completion_length=6", "progress=false", "--samples", str(out), "--json",
                 str(tmp_path / "r.json")]) == 0
    err = capsys.readouterr().err
    assert "real-model defaults (not set by you)" in err and "eval_batch_questions=16" in err
    assert "prompts: through the tokenizer's chat template (chat_template=auto" in err
    rows = _lines(out)
    assert len(rows) == 3 * (2 + 1) and {r["sample"] for r in rows} == {0, 1, "greedy"}
    assert set(rows[0]) >= {"dataset", "question_id", "answer", "completion", "extracted", "score", "hit_cap"}
    rate = json.loads((tmp_path / "r.json").read_text())["datasets"]["gsm8k"]["cap_hit_rate"]
    assert rate == pytest.approx(sum(r["hit_cap"] for r in rows) / len(rows))
    assert all(r["tokens"] <= 6 for r in rows)


def test_score_writes_every_trajectory(chat_dir, tmp_path, one_thread):
    out = tmp_path / "score"
    assert main(["score", f"model={chat_dir}", f"--dataset={GSM}", "--questions=2", f"--out={out}", "tree_b0=2",
                 "tree_l=2", "max_completion_length=6", "tree_min_room=2"]) == 0
    rows = _lines(out / "samples.jsonl")
    summary = json.loads((out / "score.json").read_text())
    assert len(rows) == sum(q["trajectories"] for q in summary["questions"])
    assert {"question_id", "leaf", "completion", "extracted", "score", "hit_cap"} <= set(rows[0])


def test_generation_config_eos_ids_end_completions(chat_dir, one_thread):
    model, tok = load_policy(str(chat_dir))
    model.eval()
    questions = build_source(build_config(None, {"eval_datasets": [str(GSM)], "model": str(chat_dir)}), tok)
    problems = next(iter(questions.test_sets.values()))[:2]
    reward = GuardedReward(math_accuracy, "math")
    first = []
    spec = RolloutSpec.independent(1, SamplingParams(temperature=1.0, max_new_tokens=8))
    evaluate(model, tok, problems, reward, spec, greedy=True, samples=first)
    greedy_first = [r for r in first if r["sample"] == "greedy"]
    ids = tok(greedy_first[0]["completion"], add_special_tokens=False)["input_ids"]
    assert ids, "the greedy completion is empty; pick another prompt"
    model.generation_config.eos_token_id = [tok.eos_token_id, ids[0]]  # its first token now ends a turn
    again = []
    evaluate(model, tok, problems, reward, spec, greedy=True, samples=again)
    row = [r for r in again if r["sample"] == "greedy"][0]
    assert row["tokens"] == 1 and not row["hit_cap"]


def test_prompt_presets_and_the_printed_choice(tmp_path, chat_dir):
    loaded = load_questions(GSM, prompt_template="boxed")
    assert loaded.questions[0].prompt.endswith("put your final answer within \\boxed{}.")
    assert PROMPT_PRESETS["answer_line"].startswith("{prompt}")
    _, tok = load_policy(str(chat_dir))
    assert describe_prompting("auto", "boxed", tok).endswith("prompt_template=boxed")
    assert describe_prompting("never", None, tok).startswith("prompts: plain text (chat_template=never)")
    tok.chat_template = None
    assert "has no chat template" in describe_prompting("auto", None, tok)

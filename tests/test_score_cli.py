"""`ibtpo score` from the command line: shipped policy, a run checkpoint, a JSONL file; one-line errors."""

import json

from ibtpo.cli import main
from ibtpo.config.schema import build_config
from ibtpo.training.trainer import Trainer

SMALL = ["tree_b0=2", "tree_l=3", "tree_min_room=2", "--questions", "4", "--batch", "3"]


def test_score_shipped_policy_writes_json_and_plot(tmp_path, capsys):
    out = tmp_path / "score"
    assert main(["score", *SMALL, "--out", str(out)]) == 0
    data = json.loads((out / "score.json").read_text())
    assert data["settings"]["tree"] == {"b0": 2, "l": 3, "k": 1, "b": 1, "G": 4}
    assert len(data["questions"]) == 4 and all(q["trajectories"] == 4 for q in data["questions"])
    agg = data["aggregate"]
    assert 0 <= agg["eff_rate"] <= 1 and 0 <= agg["mean_reward"] <= 1 and agg["new_tokens_per_question"] > 0
    assert sum(data["p_hat"]["root"]["counts"]) == 4
    assert (out / "score.png").stat().st_size > 0
    assert "ib_score" in capsys.readouterr().out
    assert main(["score", *SMALL, "--out", str(out)]) == 2  # an existing report is never clobbered silently
    assert "already holds score.json" in capsys.readouterr().err


def test_score_run_checkpoint_and_jsonl(tmp_path, tiny_model_dir):
    cfg = build_config(None, {"model": str(tiny_model_dir), "out_dir": str(tmp_path / "run"), "tensorboard": False})
    Trainer(cfg).save()
    qs = tmp_path / "q.jsonl"
    qs.write_text("".join(json.dumps({"prompt": f"Q:{a}+{a}+1\n\n", "answer": str(2 * a + 1)}) + "\n"
                          for a in range(1, 6)))
    out = tmp_path / "s"
    assert main(["score", f"model={tmp_path / 'run'}", "max_completion_length=12", "reward_fn=sum", *SMALL[:3],
                 "--dataset", str(qs),
                 "--out", str(out)]) == 0
    data = json.loads((out / "score.json").read_text())
    assert data["settings"]["dataset"] == str(qs) and [q["id"] for q in data["questions"]][:2] == ["q-0", "q-1"]


def test_incompatible_model_and_bad_paths_are_one_line_errors(tmp_path, tiny_model_dir, tokenizer, capsys):
    from transformers import AutoConfig, AutoModelForCausalLM

    small = tmp_path / "small_vocab"
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.vocab_size = 50  # fewer embeddings than the tokenizer has tokens
    AutoModelForCausalLM.from_config(config).save_pretrained(small)
    tokenizer.save_pretrained(small)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "Q:1+2\\n\\n", "answer": 3}\n{"prompt": 1}\n')
    cases = [([f"model={small}"], "do not match: the tokenizer has 100 tokens, the model embeds 50"),
             ([f"model={tmp_path / 'none'}"], "model path not found"),
             (["--dataset", str(tmp_path / "bad.jsonl")], f"{tmp_path / 'bad.jsonl'}:2: field 'prompt' must be a non-empty string"),
             (["--batch", "0"], "--batch: must be >= 1")]
    for args, message in cases:
        assert main(["score", *args, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err

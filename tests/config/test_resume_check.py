"""Resuming with changed settings: harmless changes pass, exactness-breaking ones are refused unless confirmed."""

import yaml

from ibtpo.cli import main
from ibtpo.config.schema import build_config, save_config
from ibtpo.config.resume_check import config_changes


def test_changes_are_split_into_breaking_and_harmless():
    saved = {"threads": 2, "max_completion_length": 48, "max_steps": 10, "eval_k": 4, "lr_scheduler": "constant"}
    new = {**saved, "threads": 4, "max_completion_length": 64, "max_steps": 20, "eval_k": 8, "added_later": 1}
    breaking, harmless = config_changes(saved, new)
    assert breaking == ["threads: 2 -> 4", "max_completion_length: 48 -> 64"]
    assert harmless == ["max_steps: 10 -> 20", "eval_k: 4 -> 8"]
    cosine = {**saved, "lr_scheduler": "cosine"}
    assert config_changes(cosine, {**cosine, "max_steps": 20})[0] == ["max_steps: 10 -> 20"]  # shapes the lr


def test_resume_refuses_breaking_changes_naming_them(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    save_config(build_config(None, {"out_dir": str(run)}), run / "config.yaml")
    code = main(["train", "--resume", str(run), "threads=1", "max_completion_length=64"])
    err = capsys.readouterr().err
    assert code == 2 and "threads: 2 -> 1" in err and "max_completion_length: 48 -> 64" in err
    assert "--allow-config-change" in err
    assert yaml.safe_load((run / "config.yaml").read_text())["threads"] == 2  # nothing rewritten
    # confirmed: it goes on to the trainer (which finds no checkpoint here)
    code = main(["train", "--resume", str(run), "threads=1", "--allow-config-change"])
    assert code == 2 and "no checkpoint to resume from" in capsys.readouterr().err

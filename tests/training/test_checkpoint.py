"""Manifest-verified checkpoints: atomic writes, one-line failures, the newest complete one found on resume."""

import errno
import json

import pytest
import torch

from ibtpo.training.checkpoint import (CheckpointError, clean_temporary, find_checkpoint, load_trainer_state,
                                       resume_point, save_checkpoint, verify_checkpoint)

STATE = {"optimizer": {}, "scheduler": {}, "rng": {}, "step": 0, "tokens": 0, "data_pos": 0}


@pytest.fixture
def saved(tmp_path, tiny_model, tokenizer):
    """A run directory with checkpoints step-000001 and step-000002."""
    for step in (1, 2):
        save_checkpoint(tmp_path, step, tiny_model, tokenizer, {**STATE, "step": step})
    return tmp_path


def _ck(run, n):
    return run / "checkpoints" / f"step-{n:06d}"


def test_manifest_lists_every_file_and_latest_is_found(saved):
    manifest = json.loads((_ck(saved, 2) / "manifest.json").read_text())
    assert {"model.safetensors", "trainer_state.pt", "config.json"} <= set(manifest["files"])
    assert verify_checkpoint(_ck(saved, 2), hashes=True) is None
    assert find_checkpoint(saved) == (_ck(saved, 2), "")
    assert load_trainer_state(_ck(saved, 2))["step"] == 2


@pytest.mark.parametrize("damage,fragment,newest", [
    (lambda r: (r / "checkpoints" / "latest").write_text("garbage"), "holds 'garbage', not a checkpoint name", 2),
    (lambda r: (r / "checkpoints" / "latest").write_bytes(b"\xff\xfe"), "checkpoints/latest is unreadable", 2),
    (lambda r: (r / "checkpoints" / "latest").unlink(), "checkpoints/latest is missing", 2),
    (lambda r: (r / "checkpoints" / "latest").write_text("step-000009"), "step-000009, which is incomplete (missing)", 2),
    (lambda r: (_ck(r, 2) / "trainer_state.pt").write_bytes(b"x"), "trainer_state.pt has 1 bytes", 1),
    (lambda r: (_ck(r, 2) / "manifest.json").write_text("{"), "manifest.json is unreadable", 1),
    (lambda r: (_ck(r, 2) / "tokenizer.json").unlink(), "tokenizer.json is missing", 1),
])
def test_bad_latest_falls_back_to_newest_complete_and_says_why(saved, damage, fragment, newest):
    damage(saved)
    ckpt, note = find_checkpoint(saved)
    expected = _ck(saved, newest)
    assert ckpt == expected and fragment in note and f"using the newest complete checkpoint, {expected.name}" in note


def test_checkpoint_written_before_manifests_is_accepted(saved):
    (_ck(saved, 2) / "manifest.json").unlink()
    assert find_checkpoint(saved) == (_ck(saved, 2), "")
    (_ck(saved, 2) / "model.safetensors").unlink()
    assert find_checkpoint(saved)[0] == _ck(saved, 1)


def test_same_size_corruption_is_caught_by_the_hash(saved):
    f = _ck(saved, 2) / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    assert verify_checkpoint(_ck(saved, 2)) is None  # sizes alone cannot see it
    assert "SHA-256" in verify_checkpoint(_ck(saved, 2), hashes=True)
    assert find_checkpoint(saved)[0] == _ck(saved, 1)


def test_resume_point_rules(saved):
    with pytest.raises(CheckpointError, match="already holds a run"):
        resume_point(saved, resume=False, overwrite=False)
    assert resume_point(saved, resume=False, overwrite=True) == (None, "")
    for n in (1, 2):
        (_ck(saved, n) / "trainer_state.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="no checkpoint to resume from .* start the run afresh"):
        resume_point(saved, resume=True, overwrite=False)


def test_only_an_interrupted_first_write_does_not_block_a_fresh_run(tmp_path):
    tmp = tmp_path / "checkpoints" / ".tmp-step-000002"
    tmp.mkdir(parents=True)
    (tmp / "model.safetensors").write_bytes(b"half")
    assert resume_point(tmp_path, resume=False, overwrite=False) == (None, "")
    assert clean_temporary(tmp_path) == [tmp] and not tmp.exists()


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos\n"
                                                "PytorchStreamWriter failed writing file data/0: file write failed")])
def test_failed_write_is_one_line_and_keeps_the_previous(saved, tiny_model, tokenizer, monkeypatch, error):
    def full_disk(obj, f, *a, **k):
        open(f, "wb").write(b"partial")
        raise error

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError) as exc:
        save_checkpoint(saved, 3, tiny_model, tokenizer, STATE)
    msg = str(exc.value)
    assert "\n" not in msg and "step-000003" in msg and "the previous checkpoint step-000002 is kept" in msg
    assert ("No space left" in msg) or ("file write failed" in msg)
    assert not list((saved / "checkpoints").glob(".tmp-*")) and not _ck(saved, 3).exists()
    assert find_checkpoint(saved) == (_ck(saved, 2), "")


def test_unreadable_trainer_state_is_one_line(tmp_path):
    (tmp_path / "trainer_state.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="unreadable trainer state"):
        load_trainer_state(tmp_path)
    torch.save({"hello": 1}, tmp_path / "trainer_state.pt")
    with pytest.raises(CheckpointError, match="not a trainer state of this version"):
        load_trainer_state(tmp_path)


def test_a_directory_named_latest_is_replaced_by_the_pointer(saved, tiny_model, tokenizer):
    latest = saved / "checkpoints" / "latest"
    latest.unlink()
    latest.mkdir()
    assert find_checkpoint(saved)[0] == _ck(saved, 2)
    save_checkpoint(saved, 3, tiny_model, tokenizer, {**STATE, "step": 3})
    assert latest.read_text() == "step-000003" and find_checkpoint(saved) == (_ck(saved, 3), "")

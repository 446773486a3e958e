"""The metrics.jsonl writer: torn lines, resume cuts, one-line errors."""

import pytest

def test_torn_last_line_is_skipped_and_cut_on_resume(tmp_path):
    from ibtpo.training.metrics import MetricsLogger, read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "a": 1}\n{"step": 1, "a": 2}\n{"step": 2, "a": 3}\n{"step": 3, "a"')
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2]
    log = MetricsLogger(tmp_path, tensorboard=False, resume_step=1)  # resume from the step-1 checkpoint
    assert path.read_text() == '{"step": 0, "a": 1}\n{"step": 1, "a": 2}\n'
    log.log(2, {"a": 9.0})
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2]


def test_garbage_line_names_file_and_line(tmp_path):
    from ibtpo.training.metrics import MetricsError, MetricsLogger

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\ngarbage\n{"step": 1}\n')
    with pytest.raises(MetricsError, match=r"metrics\.jsonl:2: not a metrics record"):
        MetricsLogger(tmp_path, tensorboard=False, resume_step=1)
    assert path.read_text() == '{"step": 0}\ngarbage\n{"step": 1}\n'  # left as it was


def test_short_write_leaves_no_half_record(tmp_path, monkeypatch):
    import os

    from ibtpo.training import metrics
    from ibtpo.training.metrics import MetricsLogger, read_metrics

    log = MetricsLogger(tmp_path, tensorboard=False)
    log.log(0, {"a": 1.0})
    real = os.write
    monkeypatch.setattr(metrics.os, "write", lambda fd, data: real(fd, data[:5]))
    with pytest.raises(OSError, match="No space left"):
        log.log(1, {"a": 2.0})
    monkeypatch.setattr(metrics.os, "write", real)
    assert (tmp_path / "metrics.jsonl").read_text().endswith("}\n")
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0]

"""One process per run directory."""

import json
import subprocess
import sys

import pytest

from ibtpo.training.lock import LOCK_NAME, RunLock, RunLockedError


def test_second_holder_is_refused_with_the_first_ones_pid(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from ibtpo.training.lock import RunLock; "
                               f"RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"in use by another ibtpo process \(pid {holder.pid} on "):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path):  # the kernel dropped the killed holder's lock: the stale file is taken over
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] != holder.pid
    assert not (tmp_path / LOCK_NAME).exists()


def test_stale_lock_file_is_taken_over_and_new_dir_removed_when_empty(tmp_path):
    (tmp_path / LOCK_NAME).write_text('{"pid": 999999, "host": "gone", "started": "then"}')
    lock = RunLock(tmp_path).acquire()
    lock.release()
    fresh = tmp_path / "new"
    RunLock(fresh).acquire().release()
    assert not fresh.exists()  # a run that failed before writing anything leaves no empty directory behind

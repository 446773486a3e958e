"""Wall-clock limits on user calls (``ibtpo.core.timeouts``): a sleeping call and a busy Python loop are interrupted, a
call that returns in time is not, a late signal after the call is harmless, and another SIGUSR1 handler still runs."""

import signal
import threading
import time

import pytest

from ibtpo.core.timeouts import CallTimeout, deadline


def test_sleep_is_interrupted():
    t0 = time.monotonic()
    with pytest.raises(CallTimeout):
        with deadline(0.3):
            time.sleep(30)
    assert time.monotonic() - t0 < 5


def test_busy_loop_that_catches_exception_is_interrupted():
    t0 = time.monotonic()
    with pytest.raises(CallTimeout):
        with deadline(0.3):
            while True:
                try:
                    sum(range(100))
                except Exception:  # a user's broad except does not swallow the timeout
                    pass
    assert time.monotonic() - t0 < 5


def test_in_time_and_off():
    with deadline(2.0):
        time.sleep(0.05)
    with deadline(0):
        time.sleep(0.05)
    time.sleep(0.3)  # nothing fires later


def test_off_the_main_thread_there_is_no_limit():
    done = []

    def work():
        with deadline(0.05):
            time.sleep(0.2)
        done.append(True)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert done == [True]


def test_a_sigusr1_that_is_not_ours_reaches_the_previous_handler():
    seen = []
    with deadline(5):  # installs the watchdog's handler (kept), chaining to the one installed before
        pass
    from ibtpo.core import timeouts

    previous = timeouts._WATCHDOG.previous
    timeouts._WATCHDOG.previous = lambda signum, frame: seen.append(signum)
    try:
        signal.raise_signal(signal.SIGUSR1)
    finally:
        timeouts._WATCHDOG.previous = previous
    assert seen == [signal.SIGUSR1]


def test_reward_timeout_names_the_function_and_question():
    from ibtpo.rewards.functions import GuardedReward, RewardError

    def slow(prompts, completions, completion_ids=None, **columns):
        time.sleep(30)

    guard = GuardedReward(slow, "my.py:slow", timeout_s=0.3)
    with pytest.raises(RewardError, match=r"reward function my.py:slow did not return within reward_timeout_s=0.3 s "
                                          r"on question q7 \(batch of 2\)"):
        guard(["p", "p"], ["a", "b"], question_id=["q7", "q8"])

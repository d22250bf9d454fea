"""The pass loop under the outbox senders: a pass asks for the next one sooner explicitly."""

from __future__ import annotations

import threading

from ainode_plugin.passloop import PassLoop

HOUR_S = 3600.0


def test_a_pass_that_asks_again_runs_again_before_the_interval() -> None:
    passes: list[int] = []
    second = threading.Event()

    def run() -> None:
        passes.append(len(passes))
        if len(passes) == 1:
            loop.again_in(0.0)  # the first pass wants another one at once
        else:
            second.set()

    loop = PassLoop("test-again", run)
    loop.start(HOUR_S)  # without the request, the second pass would come in an hour
    try:
        assert second.wait(timeout=30), "the pass that asked for another did not get it"
    finally:
        loop.stop()
    assert passes[:2] == [0, 1]
    assert not loop.running


def test_a_failing_pass_keeps_the_loop_and_a_wake_runs_the_next() -> None:
    calls: list[int] = []
    failing = threading.Event()
    recovered = threading.Event()

    def run() -> None:
        calls.append(1)
        if len(calls) == 1:
            failing.set()
            raise RuntimeError("disk full for a while")
        recovered.set()

    loop = PassLoop("test-fail", run)
    loop.start(HOUR_S)
    try:
        assert failing.wait(timeout=30)
        loop.wake()  # during or after the failed pass: either way the next pass runs
        assert recovered.wait(timeout=30), "the loop died with its failing pass"
    finally:
        loop.stop()

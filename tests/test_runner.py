"""The shared case loop (:func:`medsam3.runner.run_cases`): reading runs ahead of the work in
item order, never more than ``prefetch`` items ahead; a failure is recorded (batch) or ends the
loop (evaluation)."""

from __future__ import annotations

import threading

import pytest

from medsam3.errors import InputError
from medsam3.runner import run_cases


class Probe:
    """Records reads and works; ``read`` may block until the test releases it."""

    def __init__(self, fail_read=(), fail_work=()):
        self.events: list[tuple[str, int]] = []
        self.fail_read, self.fail_work = set(fail_read), set(fail_work)
        self.lock = threading.Lock()
        self.max_ahead = 0
        self.threads: set[str] = set()

    def read(self, item):
        with self.lock:
            self.events.append(("read", item))
            self.threads.add(threading.current_thread().name)
            worked = sum(1 for kind, _ in self.events if kind == "work")
            reads = sum(1 for kind, _ in self.events if kind == "read")
            self.max_ahead = max(self.max_ahead, reads - worked)
        if item in self.fail_read:
            raise InputError(f"item {item} is unreadable")
        return item * 10

    def work(self, item, loaded):
        assert threading.current_thread() is threading.main_thread()
        with self.lock:
            self.events.append(("work", item))
        if item in self.fail_work:
            raise RuntimeError(f"boom on {item}")
        assert loaded == item * 10
        return loaded + 1


def test_reads_run_ahead_on_a_thread_in_order_within_the_bound():
    probe = Probe()
    gate = threading.Event()
    seen_ahead = []

    def slow_work(item, loaded):
        if item == 0:  # hold the model on the first item: the reader fills the queue and must stop
            gate.wait(timeout=1.0)
            seen_ahead.append(sum(1 for kind, _ in probe.events if kind == "read"))
        return probe.work(item, loaded)

    outcomes = run_cases(range(8), probe.read, slow_work, prefetch=2, progress=False)
    assert [o.value for o in outcomes] == [i * 10 + 1 for i in range(8)]
    assert [o.status for o in outcomes] == ["ok"] * 8
    assert [i for kind, i in probe.events if kind == "read"] == list(range(8))
    assert [i for kind, i in probe.events if kind == "work"] == list(range(8))
    assert probe.threads == {"medsam3-reader"}
    # while item 0 is worked on: item 0 itself, 2 waiting in the queue, 1 read and blocked on put
    assert seen_ahead == [4]
    assert probe.max_ahead <= 2 + 2
    assert all(o.seconds >= o.read_seconds >= 0 for o in outcomes)


def test_failures_are_recorded_and_the_run_goes_on(capsys):
    probe = Probe(fail_read={1}, fail_work={3})
    done = []
    outcomes = run_cases(range(5), probe.read, probe.work, prefetch=1, progress=False, on_done=done.append,
                         name=lambda i: f"case{i}")
    assert [o.status for o in outcomes] == ["ok", "failed", "ok", "failed", "ok"]
    assert outcomes[1].reason == "item 1 is unreadable" and isinstance(outcomes[1].error, InputError)
    assert outcomes[3].reason == "RuntimeError: boom on 3"
    assert ("work", 1) not in probe.events  # a failed read never reaches the model
    assert done == outcomes  # each outcome as soon as it exists
    err = capsys.readouterr().err
    assert "medsam3: case case1 failed: item 1 is unreadable" in err and "case case3 failed" in err


@pytest.mark.parametrize("fail", ["read", "work"])
def test_fail_fast_raises_the_first_failure_and_works_on_nothing_after_it(fail):
    probe = Probe(**{f"fail_{fail}": {2, 4}})
    with pytest.raises(InputError if fail == "read" else RuntimeError, match="2"):
        run_cases(range(6), probe.read, probe.work, prefetch=2, progress=False, fail_fast=True)
    assert [i for kind, i in probe.events if kind == "work"] == ([0, 1] if fail == "read" else [0, 1, 2])
    assert not any(t.name == "medsam3-reader" for t in threading.enumerate())  # the reader stopped


def test_an_interrupt_always_ends_the_loop_and_stops_the_reader():
    def work(item, loaded):
        if item == 1:
            raise KeyboardInterrupt
        return loaded

    with pytest.raises(KeyboardInterrupt):
        run_cases(range(50), lambda i: i, work, prefetch=3, progress=False)
    assert not any(t.name == "medsam3-reader" for t in threading.enumerate())


def test_bad_prefetch_and_no_items():
    with pytest.raises(ValueError, match="prefetch"):
        run_cases([1], lambda i: i, lambda i, x: x, prefetch=0, progress=False)
    assert run_cases([], lambda i: i, lambda i, x: x, progress=False) == []

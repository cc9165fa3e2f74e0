from llmq.resilience.outage import OutageMemo


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_failure_skips_the_dependency_for_the_hold_then_asks_again() -> None:
    clock = Clock()
    memo = OutageMemo(2.0, clock)
    assert memo.available()  # never failed
    memo.failed()
    assert not memo.available()
    clock.now += 1.9
    assert not memo.available()
    clock.now += 0.1
    assert memo.available()  # held exactly 2 s
    memo.failed()  # a failed retry holds again from now
    clock.now += 1.0
    assert not memo.available()

"""map_in_threads: results in order, bounded work in flight, the first error raised, nothing after it."""
import threading

import pytest

from advent.utils.threads import map_in_threads


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_results_come_in_the_order_of_the_items(threads):
    gates = {i: threading.Event() for i in range(12)}

    def work(i):
        if i % 3 == 0 and threads > 1:  # these finish only after a later item has finished
            assert gates[i + 1].wait(timeout=60)
        gates[i].set()
        return i * i

    assert list(map_in_threads(work, range(12), threads)) == [i * i for i in range(12)]


def test_at_most_twice_the_threads_are_taken_ahead_of_the_consumer():
    taken = []

    def items():
        for i in range(40):
            taken.append(i)
            yield i

    results = map_in_threads(lambda i: i, items(), 3)
    for consumed in range(1, 41):
        assert next(results) == consumed - 1
        # 2 * 3 in flight: the result just handed over and the 5 items taken beyond it
        assert len(taken) == min(40, consumed + 2 * 3 - 1)
    assert list(results) == []


@pytest.mark.parametrize("threads", [0, 2])
def test_the_first_error_is_raised_and_later_items_are_not_started(threads):
    started = []

    def work(i):
        started.append(i)
        if i == 5:
            raise OSError("disk full")
        return i

    results = map_in_threads(work, range(100), threads)
    assert [next(results) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(OSError, match="disk full"):
        next(results)
    # none beyond the items already taken (2 * threads from the failed one on; those not yet
    # running when it failed are cancelled)
    assert set(range(6)) <= set(started) <= set(range(5 + max(2 * threads, 1)))
    with pytest.raises(StopIteration):
        next(results)

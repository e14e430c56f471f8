"""Per-item host work spread over a few threads, in order and in bounded memory.

Used where a GPU run is limited by the host (ESL's counting, spilling and PNG writing): the
heavy parts (numpy, torch, zlib, file writes) release the GIL, so threads run them at once.
"""
from collections import deque
from concurrent.futures import ThreadPoolExecutor


def map_in_threads(function, items, threads):
    """Yield function(item) for each of `items`, in their order, computed by `threads` threads
    (in the calling thread when 0). At most 2 * threads items are in flight, so a slow consumer
    holds back the work rather than piling up results. `items` is iterated in the calling thread.
    The first exception is raised here; the items in flight are finished or cancelled first."""
    if threads <= 0:
        yield from map(function, items)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending = deque()
        try:
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) >= 2 * threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()

"""Session ids stay unique across worker generations (condure/workerproc.py).

A session adopted after a restart keeps its id, so the workers of the new
run must never make it again. Ids are ``index-slot-counter``; the counter
starts at ``first_id(generation)``. Generations come from the supervisor:
32 random bits at start, above 8 bits that count the workers it spawns.
"""

from __future__ import annotations

from condure.slots import Slots
from condure.workerproc import first_id


def ids(generation: int, count: int = 3) -> set[bytes]:
    slots = Slots(1, first_id(generation))
    return {slots.next_id(1) for _ in range(count)}


def test_runs_that_differ_only_in_their_random_start_make_different_ids():
    # the random part is above the low 16 bits: it must count
    a, b = 0x1234_5600 + 2, 0x9876_5600 + 2
    assert not ids(a) & ids(b)
    c, d = 0x0001_0000 << 8, 0x0002_0000 << 8
    assert not ids(c) & ids(d)


def test_successive_workers_of_one_run_make_different_ids():
    start = 0xABCD_EF01 << 8
    seen: set[bytes] = set()
    for spawn in range(256):
        made = ids(start + spawn)
        assert not made & seen
        seen |= made


def test_four_billion_sessions_of_one_worker_stay_below_the_next():
    assert first_id(7) + 0xFFFF_FFFF < first_id(8)

"""The keep-alive sweep keeps to the clock (condure/sweep.py): every slot
position is visited once per 45 s of real time however late the ticks
come, and a stall visits a whole round at most once."""

from __future__ import annotations

from collections import Counter

from condure.sweep import KEEP_ALIVE_INTERVAL, KeepAliveSweep

SLOTS = 1000


def run(tick: float, seconds: float, start: float = 100.0) -> Counter[int]:
    """Visits per slot over ``seconds`` with a tick every ``tick`` s."""
    slots = list(range(SLOTS))  # stands for the connections in the slots
    sweep = KeepAliveSweep(SLOTS, start)
    visits: Counter[int] = Counter()
    steps = round(seconds / tick)
    for i in range(1, steps + 1):
        visits.update(sweep.visit(slots, start + i * tick))  # type: ignore[arg-type]
    return visits


def once_a_round(tick: float) -> None:
    """Within 45 s and one tick every slot was visited, none twice but
    those the next round had reached (a tick or two)."""
    visits = run(tick, KEEP_ALIVE_INTERVAL + tick)
    assert len(visits) == SLOTS
    per_tick = SLOTS * tick / KEEP_ALIVE_INTERVAL
    assert sum(n - 1 for n in visits.values()) <= 2 * per_tick + 1


def test_on_time_ticks_visit_every_slot_once_a_round():
    once_a_round(0.1)


def test_late_ticks_still_visit_every_slot_once_in_45_seconds():
    # A busy machine: the 100 ms tick comes every 350 ms. Paced by the count
    # of ticks, a round would take 157 s, past the handler's 60 s.
    once_a_round(0.35)


def test_a_stall_visits_a_whole_round_once():
    slots = list(range(SLOTS))
    sweep = KeepAliveSweep(SLOTS, 0.0)
    first = list(sweep.visit(slots, 200.0))  # four rounds overdue
    assert sorted(first) == slots  # each once
    assert list(sweep.visit(slots, 200.0)) == []  # nothing owed after it
    assert len(list(sweep.visit(slots, 200.0 + KEEP_ALIVE_INTERVAL / 2))) == SLOTS // 2


def test_empty_slots_and_slots_past_maxconn():
    # Adopted connections may take slots past maxconn: the round covers them.
    slots = [None] * 10 + ["a", None, "b"]
    sweep = KeepAliveSweep(10, 0.0)
    assert sorted(sweep.visit(slots, KEEP_ALIVE_INTERVAL)) == ["a", "b"]  # type: ignore[arg-type]

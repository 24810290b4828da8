"""The bucketed timer wheel: deadlines that move later or earlier."""

from __future__ import annotations

from condure.net.timers import RESOLUTION, TimerWheel


class Owner:
    def __init__(self, deadline):
        self.deadline = deadline
        self.timer_key = None
        self.fired = 0


def fire(owner):
    owner.fired += 1
    owner.deadline = None


def test_fires_once_when_due_and_not_before():
    wheel = TimerWheel()
    a = Owner(1.0)
    wheel.schedule(a)
    wheel.expire(0.95, fire)
    assert a.fired == 0
    wheel.expire(1.0 + RESOLUTION, fire)
    assert a.fired == 1
    wheel.expire(5.0, fire)
    assert a.fired == 1 and len(wheel) == 0


def test_a_later_deadline_is_refiled_when_the_old_bucket_fires():
    wheel = TimerWheel()
    a = Owner(1.0)
    wheel.schedule(a)
    a.deadline = 3.0  # moved later: no new entry needed now
    wheel.schedule(a)
    assert len(wheel) == 1
    wheel.expire(1.5, fire)
    assert a.fired == 0 and len(wheel) == 1  # filed again for 3.0
    wheel.expire(3.0 + RESOLUTION, fire)
    assert a.fired == 1


def test_an_earlier_deadline_fires_early_and_the_stale_entry_is_ignored():
    wheel = TimerWheel()
    a = Owner(5.0)
    wheel.schedule(a)
    a.deadline = 1.0
    wheel.schedule(a)
    wheel.expire(1.0 + RESOLUTION, fire)
    assert a.fired == 1
    wheel.expire(10.0, fire)  # the entry left in the 5.0 bucket is stale
    assert a.fired == 1


def test_many_owners_fire_in_deadline_order():
    wheel = TimerWheel()
    owners = [Owner(float(d)) for d in (3, 1, 2)]
    for o in owners:
        wheel.schedule(o)
    order = []
    wheel.expire(10.0, lambda o: (order.append(o.deadline), fire(o)))
    assert order == [1.0, 2.0, 3.0]

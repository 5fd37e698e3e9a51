"""The hub on its own, with no HTTP: park and unpark, wake one channel or many waiters,
the lost-wakeup race, the count watch, shutdown."""
import gevent
import pytest
from gevent.hub import Waiter

from geventcomet.hub import FANOUT_MIN_WAITERS, Hub, Reason

BOUND_S = 10  # generous: only a hang waits this long


class Parked:
    """A greenlet parked in the hub like a held request: park, wait once, unpark."""

    def __init__(self, hub: Hub, *channels: str) -> None:
        self.hub, self.channels = hub, channels
        self.waiter = Waiter()
        self.saw_waking = None
        hub.park(self.waiter, channels)
        self.greenlet = gevent.spawn(self._wait)

    def _wait(self) -> Reason:
        try:
            reason = self.waiter.get()
            self.saw_waking = self.hub.waking
            return reason
        finally:
            self.hub.unpark(self.waiter, self.channels)

    def reason(self) -> Reason:
        return self.greenlet.get(timeout=BOUND_S)


@pytest.fixture
def hub() -> Hub:
    return Hub()


def test_park_and_unpark_keep_the_counts(hub):
    assert hub.waiting == 0 and hub.idle.is_set()
    waiter = Waiter()
    hub.park(waiter, ("a", "b"))
    assert hub.waiting == 1 and not hub.idle.is_set()
    assert hub.waiter_count("a") == hub.waiter_count("b") == 1
    assert hub.channel_waiters() == {"a": 1, "b": 1}
    hub.unpark(waiter, ("a", "b"))
    assert hub.waiting == 0 and hub.idle.is_set()
    assert hub.channel_waiters() == {}  # an empty channel's set is dropped


def test_a_wake_takes_the_channels_waiters_and_switches_to_each(hub):
    news, sport = Parked(hub, "news"), Parked(hub, "sport")
    gevent.sleep(0)  # both are blocked in get()
    assert hub.wake("news") == 1
    assert hub.waiter_count("news") == 0  # taken away at once, before anyone runs
    assert news.reason() is Reason.WAKE
    assert not sport.greenlet.ready() and hub.waiting == 1
    assert hub.wake("nobody") == 0
    assert hub.wake("sport") == 1 and sport.reason() is Reason.WAKE
    assert hub.waiting == 0


def test_a_wake_between_park_and_wait_is_not_lost(hub):
    waiter = Waiter()
    hub.park(waiter, ("c",))  # parked before reading: a publish now must still reach it
    assert hub.wake("c") == 1
    with gevent.Timeout(BOUND_S):
        assert waiter.get() is Reason.WAKE
    hub.unpark(waiter, ("c",))
    assert hub.waiting == 0


def test_a_wake_of_many_is_one_loop_and_is_recorded(hub):
    parked = [Parked(hub, "all", f"own{i}") for i in range(FANOUT_MIN_WAITERS * 3)]
    gevent.sleep(0)
    assert not hub.waking
    assert hub.wake("all") == len(parked)
    assert all(p.reason() is Reason.WAKE for p in parked)
    assert all(p.saw_waking for p in parked)  # each ran from the hub's loop
    assert not hub.waking
    fanout = hub.last_fanout
    assert fanout is not None and fanout.waiters == len(parked) and fanout.ended >= fanout.started
    assert hub.waiting == 0 and hub.channel_waiters() == {}


def test_a_small_wake_is_not_recorded_as_a_fanout(hub):
    one = Parked(hub, "c")
    gevent.sleep(0)
    hub.wake("c")
    # one waiter: nothing to let through after its reply, so no yield (waking stays false)
    assert one.reason() is Reason.WAKE and one.saw_waking is False
    assert hub.last_fanout is None


def test_wake_all_wakes_every_waiter_once(hub):
    parked = [Parked(hub, "a"), Parked(hub, "b", "a"), Parked(hub, "c")]
    gevent.sleep(0)
    assert hub.wake_all() == 3
    assert hub.channel_waiters() == {}
    assert [p.reason() for p in parked] == [Reason.WAKE] * 3
    assert hub.wake_all() == 0


def test_watch_count_is_set_when_the_count_is_reached_and_not_before(hub):
    two = hub.watch_count(2)
    first = Parked(hub, "c")
    assert not two.is_set()
    second = Parked(hub, "d")
    assert two.is_set()
    hub.unwatch_count(2)
    already = hub.watch_count(2)  # that many are parked now: set at once
    assert already.is_set()
    hub.unwatch_count(2)
    gevent.sleep(0)
    hub.wake_all()
    first.reason(), second.reason()
    zero = hub.watch_count(0)
    assert zero.is_set()
    hub.unwatch_count(0)


def test_a_count_watched_twice_stays_watched_until_both_leave(hub):
    one, again = hub.watch_count(1), hub.watch_count(1)
    assert one is again
    hub.unwatch_count(1)
    parked = Parked(hub, "c")
    assert one.is_set()  # the second watcher still holds the watch
    hub.unwatch_count(1)
    gevent.sleep(0)
    hub.wake("c")
    parked.reason()
    later = hub.watch_count(1)
    assert later is not one and not later.is_set()
    hub.unwatch_count(1)


def test_next_change_is_set_at_the_next_park(hub):
    change = hub.next_change()
    assert not change.is_set()
    parked = Parked(hub, "c")
    assert change.is_set()
    gevent.sleep(0)
    hub.wake("c")
    parked.reason()


def test_shutdown_wakes_everyone_with_shutdown_and_idles(hub):
    parked = [Parked(hub, "a"), Parked(hub, "b")]
    gevent.sleep(0)
    hub.shutdown()
    assert hub.closing
    assert [p.reason() for p in parked] == [Reason.SHUTDOWN] * 2
    assert hub.idle.wait(BOUND_S) and hub.waiting == 0

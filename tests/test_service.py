"""The Comet service driven directly, with no HTTP and no server: subscribe, wait,
publish, the limits, backend failures as one error, the count watch, the snapshot."""
import socket

import gevent
import pytest

from geventcomet import protocol
from geventcomet.backends.memory import MemoryBackend
from geventcomet.config import Config
from geventcomet.errors import (
    BackendError,
    BadRequest,
    ClientGone,
    ClientLimitReached,
    CometError,
    NotFound,
    Unavailable,
)
from geventcomet.service import LIMIT_RETRY_S, MAX_COUNT_WATCHES, CometService, Published

from . import helpers

BOUND_S = 10  # generous: only a hang waits this long


@pytest.fixture
def make_service():
    made = []

    def make(backend=None, **overrides) -> CometService:
        config = Config(**overrides)
        made.append(CometService(config, backend or MemoryBackend(config)))
        return made[-1]

    yield make
    for service in made:
        service.close()


@pytest.fixture
def service(make_service) -> CometService:
    return make_service()


def notify(channel=None, data="1", client=None) -> protocol.NotifyRequest:
    return protocol.NotifyRequest(channel, client, data)


def subscribe(service, query: str):
    return service.subscribe(service.parse_register(query))


def wait_parked(service, count: int) -> None:
    helpers.wait_parked(service.hub, count, BOUND_S)


def test_subscribe_mints_a_client_with_its_private_channel_last(service):
    client, channels, positions = subscribe(service, "channel=a&channel=b")
    assert channels == ("a", "b", "@" + client)
    assert positions == {"a": None, "b": None, "@" + client: None}
    assert service.backend.is_registered(client)
    again, _, _ = subscribe(service, f"channel=a&client={client}")
    assert again == client


def test_subscribe_starts_at_the_cursor(service):
    me, _, _ = subscribe(service, "channel=a")  # a server-minted id: a chosen one is refused
    client, channels, _ = subscribe(service, f"channel=a&client={me}&since=ep~a~3~@{me}~1~other~9")
    assert (client, channels) == (me, ("a", "@" + me))
    _, _, positions = subscribe(service, f"channel=a&client={me}&since=ep~a~3~@{me}~1~other~9")
    assert positions == {"a": 3, "@" + me: 1}  # the cursor's other channels are not polled


def test_wait_answers_at_once_with_news_and_at_a_zero_timeout_without(service):
    _, channels, positions = subscribe(service, "channel=a")
    empty = service.wait(channels, positions, None, 0, None)
    assert empty.timeout and empty.events == [] and empty.recovered
    service.publish(notify("a", '"x"'))
    news = service.wait(channels, empty.positions, empty.epoch, 0, None)
    assert [protocol.encode_event("a", 1, '"x"')] == news.events and not news.timeout


def test_a_publish_wakes_a_parked_wait(service):
    _, channels, positions = subscribe(service, "channel=a")
    waiting = gevent.spawn(service.wait, channels, positions, None, BOUND_S * 2, None)
    wait_parked(service, 1)
    sent = service.publish(notify("a", "7"))
    assert sent == Published("a", 1, 1)
    result = waiting.get(timeout=BOUND_S)
    assert result.events == [protocol.encode_event("a", 1, "7")] and result.positions["a"] == 1
    assert service.stats.published == 1 and service.hub.waiting == 0


def test_a_wake_without_news_parks_again(service):
    _, channels, positions = subscribe(service, "channel=a")
    waiting = gevent.spawn(service.wait, channels, positions, None, BOUND_S * 2, None)
    wait_parked(service, 1)
    change = service.hub.next_change()
    assert service.hub.wake_all() == 1 and service.hub.waiter_count("a") == 0
    assert change.wait(BOUND_S)  # it read, found nothing, and parked again
    assert service.hub.waiter_count("a") == 1 and not waiting.ready()
    service.publish(notify("a"))
    assert waiting.get(timeout=BOUND_S).events


def test_a_wait_ends_with_client_gone_when_its_socket_hangs_up(service):
    _, channels, positions = subscribe(service, "channel=a")
    ours, theirs = socket.socketpair()
    with ours:
        waiting = gevent.spawn(service.wait, channels, positions, None, BOUND_S * 2, ours)
        wait_parked(service, 1)
        theirs.close()
        with pytest.raises(ClientGone):
            waiting.get(timeout=BOUND_S)
    assert service.hub.waiting == 0


def test_shutdown_answers_a_parked_wait_and_later_ones_at_once(service):
    _, channels, positions = subscribe(service, "channel=a")
    waiting = gevent.spawn(service.wait, channels, positions, None, BOUND_S * 2, None)
    wait_parked(service, 1)
    assert service.unready_reason() is None
    service.hub.shutdown()
    assert waiting.get(timeout=BOUND_S).shutting_down
    assert service.wait(channels, positions, None, BOUND_S * 2, None).shutting_down
    assert service.unready_reason().startswith("draining")


def test_publish_to_a_client_needs_its_registration(service):
    with pytest.raises(NotFound):
        service.publish(notify(client="nobody"))
    client, _, _ = subscribe(service, "channel=a")
    assert service.publish(notify(client=client)) == Published("@" + client, 1, 0)


def test_an_idempotency_key_is_bounded_and_answers_its_first_id(service):
    with pytest.raises(CometError, match="Idempotency-Key"):
        service.publish(notify("a"), "k" * 201)
    first = service.publish(notify("a"), "key")
    assert service.publish(notify("a"), "key").seq == first.seq == 1


def test_refuse_if_full_counts_parked_waits_and_open_streams(make_service):
    service = make_service(max_waiting=2)
    service.refuse_if_full()
    _, channels, positions = subscribe(service, "channel=a")
    waiting = gevent.spawn(service.wait, channels, positions, None, BOUND_S * 2, None)
    wait_parked(service, 1)
    service.streams.open += 1  # a stream writing (not parked) holds its place too
    assert service.held() == 2
    with pytest.raises(Unavailable, match="capacity"):
        service.refuse_if_full()
    service.streams.open -= 1
    service.refuse_if_full()
    service.publish(notify("a"))
    assert waiting.get(timeout=BOUND_S).events


class FailingBackend(MemoryBackend):
    """A memory backend whose writes fail the way a real one can."""

    failure: Exception = BackendError("the disk is on fire")

    def publish(self, channel, data_json, idempotency_key=None):
        raise self.failure

    def register(self, client):
        raise self.failure


@pytest.mark.parametrize("failure, message, retry_after", [
    (BackendError("the disk is on fire"), "backend unavailable: the disk is on fire", "1"),
    (ClientLimitReached(5, 60), "too many registered clients", str(LIMIT_RETRY_S)),
])
def test_backend_failures_become_unavailable(make_service, failure, message, retry_after):
    backend = FailingBackend(Config())
    backend.failure = failure
    service = make_service(backend)
    for attempt in (lambda: service.publish(notify("a")), lambda: subscribe(service, "channel=a")):
        with pytest.raises(Unavailable) as refused:
            attempt()
        assert message in refused.value.message and refused.value.headers == (("Retry-After", retry_after),)
    assert service.stats.published == 0


def test_a_resumable_subscription_takes_its_client_from_the_cursor(service):
    req = service.parse_register("", resumable=True, last_event_id="ep~news~4~@me~2")
    assert req.client == "me" and req.cursor.positions == {"news": 4, "@me": 2}
    assert service.parse_register("channel=a&last_event_id=ep~a~1", resumable=True).cursor.positions == {"a": 1}
    with pytest.raises(BadRequest, match="missing channel"):
        service.parse_register("last_event_id=ep~a~1", resumable=True)
    with pytest.raises(BadRequest, match="missing channel"):
        service.parse_register("since=ep~@me~2")  # a long-poll names its client itself


def test_wait_for_waiting_returns_when_the_count_is_reached(service):
    watching = gevent.spawn(service.wait_for_waiting, 1, BOUND_S * 2)
    gevent.sleep(0)
    assert not watching.ready()
    _, channels, positions = subscribe(service, "channel=a")
    waiting = gevent.spawn(service.wait, channels, positions, None, BOUND_S * 2, None)
    watching.get(timeout=BOUND_S)
    service.wait_for_waiting(1, BOUND_S)  # reached already: at once
    service.publish(notify("a"))
    assert waiting.get(timeout=BOUND_S).events


def test_count_watches_are_bounded(service):
    watches = [gevent.spawn(service.wait_for_waiting, 5, BOUND_S * 2) for _ in range(MAX_COUNT_WATCHES)]
    gevent.sleep(0)
    with pytest.raises(Unavailable, match="at most"):
        service.wait_for_waiting(5, BOUND_S)
    gevent.killall(watches)
    service.wait_for_waiting(0, 0)


def test_the_snapshot_counts_and_merges_its_sources(service):
    service.stats_sources.append(lambda: {"connections": 3})
    service.publish(notify("a"))
    snap = service.snapshot()
    assert snap["connections"] == 3 and snap["published"] == 1 and snap["waiting"] == snap["held"] == 0
    assert snap["streams"] == snap["streams_opened"] == 0 and snap["epoch"] == service.backend.epoch
    assert service.channels() == [("a", 0)]

"""RedisPublisher against a running ``--workers 3`` server on the same Redis: the same ids as
HTTP notifies, the same idempotency, wake-ups reaching subscribers on every worker."""
import pytest
import requests

from geventcomet.client import BadRequest, NotFound, Publisher, RedisPublisher, Subscriber

from .client_fixtures import Collector
from .helpers import ServerProcess
from .test_client_subscriber import first_cursor


@pytest.fixture
def three_workers(redis_url):
    server = ServerProcess("--workers", "3", "--backend", redis_url, ready_timeout=40)
    assert server.ready is not None and len(server.ready.workers) == 3, "".join(server.log)
    yield server
    server.stop()


@pytest.mark.timeout(90)
def test_redis_publisher_shares_ids_keys_and_wake_ups_with_the_servers(three_workers, redis_url):
    url = three_workers.url
    cursor = first_cursor(url, "news")
    collectors = [Collector(Subscriber(url, "news", cursor=cursor, poll_timeout_s=10)) for _ in range(6)]
    publisher, direct = Publisher(url), RedisPublisher(redis_url)
    try:
        assert publisher.publish("news", "http") == 1
        assert direct.publish("news", "redis", idempotency_key="k1") == 2
        assert direct.publish("news", "redis", idempotency_key="k1") == 2  # the retry stores nothing
        assert publisher.publish("news", "http again") == 3
        assert direct.publish_many([("news", "b1"), ("other", "o1"), ("news", "b2")], idempotency_key="b") == [4, 1, 5]
        assert direct.publish_many([("news", "b1"), ("other", "o1"), ("news", "b2")], idempotency_key="b") == [4, 1, 5]
        for collector in collectors:  # polls held on several workers: every one was woken
            collector.wait_for(5)
    finally:
        for collector in collectors:
            collector.stop()
        publisher.close()
    expected = [(1, "http"), (2, "redis"), (3, "http again"), (4, "b1"), (5, "b2")]
    assert all([(e.id, e.data) for e in c.events] == expected for c in collectors)
    # An HTTP notify with the key the direct publisher used is the same notify (shared keys).
    reply = requests.post(url + "/notify", json={"channel": "news", "data": "x"}, headers={"Idempotency-Key": "k1"},
                          timeout=10)
    assert reply.json()["id"] == 2
    client = requests.get(url + "/register", params={"channel": "x", "timeout": 0}, timeout=10).json()["client"]
    assert direct.notify_client(client, "private") == 1
    with pytest.raises(NotFound):
        direct.notify_client("nobody", 1)
    with pytest.raises(BadRequest):
        direct.publish("bad name", 1)
    with pytest.raises(BadRequest, match="strict JSON"):
        direct.publish("news", float("inf"))
    direct.close()

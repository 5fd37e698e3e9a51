import gevent


def test_notify_wakes_a_waiting_register(server, comet):
    poll = gevent.spawn(comet.register, "news", timeout=10)
    server.wait_waiting(1)
    assert comet.notify("news", {"x": 1}) == {"channel": "news", "id": 1, "woken": 1}
    reply = poll.get(timeout=5)
    assert reply["events"] == [{"channel": "news", "id": 1, "data": {"x": 1}}]
    assert reply["timeout"] is False and reply["recovered"] is True


def test_redis_server_fixture_answers(redis_url):
    import redis
    assert redis.Redis.from_url(redis_url).ping()

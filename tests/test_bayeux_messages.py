"""Bayeux protocol logic with plain calls: channel names, wildcard feeds, delivery selection, messages."""
from __future__ import annotations

import pytest

from geventcomet import protocol
from geventcomet.bayeux import channels, messages
from geventcomet.bayeux.channels import ChannelError


@pytest.mark.parametrize("name", ["/a", "/a/b", "/chat/room-1", "/x.y:z/_"])
def test_valid_names(name):
    assert channels.check_name(name) == name


@pytest.mark.parametrize("name", ["", "a", "/", "/a/", "//a", "/a b", "/a/*", "/é", "/" + "x" * 128, 5, None])
def test_invalid_names(name):
    with pytest.raises(ChannelError):
        channels.check_name(name)


def test_subscriptions_and_their_feeds():
    assert channels.feed_of("/a/b") == "/a/b"
    assert channels.feed_of("/a/*") == "bx.one:/a" and channels.feed_of("/a/**") == "bx.any:/a"
    assert channels.feed_of("/*") == "bx.one:" and channels.feed_of("/**") == "bx.any:"
    for feed in ("bx.one:", "bx.any:/a"):
        assert protocol.validate_channel(feed)  # feeds are ordinary backend channels
    for bad in ("/a/*/b", "/a/***", "/a*", "*", 3):
        with pytest.raises(ChannelError):
            channels.check_subscription(bad)


def test_a_publish_goes_to_every_matching_feed():
    assert channels.feeds_of_publish("/a/b/c") == ("bx.one:/a/b", "bx.any:/a/b", "bx.any:/a", "bx.any:")
    assert channels.feeds_of_publish("/a") == ("bx.one:", "bx.any:")
    for pattern in ("/a/b/*", "/a/b/**", "/a/**", "/**"):
        assert channels.matches(pattern, "/a/b/c") and channels.feed_of(pattern) in channels.feeds_of_publish("/a/b/c")
    assert not channels.matches("/a/*", "/a/b/c") and not channels.matches("/a/**", "/ab")


def feed_event(feed: str, seq: int, inner: bytes) -> bytes:
    return protocol.encode_event(feed, seq, inner.decode())


def test_each_event_is_delivered_once_whatever_the_overlap():
    direct = protocol.encode_event("/a/b", 7, '"x"')
    events = [direct, feed_event("bx.one:/a", 1, direct), feed_event("bx.any:/a", 1, direct),
              protocol.encode_event("bx.s:me", 3, "0")]
    assert channels.select_deliveries(events, ("/a/*", "/a/**", "/a/b")) == [direct]
    assert channels.select_deliveries(events[1:], ("/a/*", "/a/**")) == [direct]  # the first pattern's feed
    assert channels.select_deliveries(events[2:], ("/a/**",)) == [direct]
    assert channels.select_deliveries(events[3:], ("/a/b",)) == []  # a control event is never delivered


def test_forged_feed_events_are_dropped():
    forged = [protocol.encode_event("bx.one:/a", 1, '{"not":"an event"}'),
              feed_event("bx.one:/a", 2, protocol.encode_event("/elsewhere/b", 1, "1")),
              protocol.encode_event("bx.one:/a", 3, "5")]
    assert channels.select_deliveries(forged, ("/a/*",)) == []


def test_parse_batch_accepts_an_array_or_one_object():
    assert messages.parse_batch(b'{"channel": "/meta/handshake"}') == [{"channel": "/meta/handshake"}]
    assert len(messages.parse_batch('[{"channel": "/a", "id": 1}, {"channel": "/b"}]')) == 2


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b"null", b"[null]", b'[{"channel": null}]',
                                  b'[{"channel": "/a", "id": true}]', b'[{"channel": "/a", "x": Infinity}]',
                                  b"[" + b",".join([b'{"channel":"/a"}'] * 101) + b"]"])
def test_parse_batch_refuses(body):
    with pytest.raises(messages.BadBayeux):
        messages.parse_batch(body)


def test_replies_echo_id_and_carry_channel_and_successful():
    request = {"channel": "/meta/subscribe", "id": "4", "clientId": "c", "subscription": "/a"}
    assert messages.reply(request, True) == {**request, "successful": True}
    refused = messages.unknown_client({"channel": "/meta/connect", "id": "5", "clientId": "c"})
    assert refused["error"] == "402:c:Unknown client" and refused["advice"]["reconnect"] == "handshake"
    assert refused["successful"] is False and refused["id"] == "5"


def test_advice_timeout_and_ext_token():
    assert messages.client_timeout_ms({"advice": {"timeout": 0}}) == 0
    assert messages.client_timeout_ms({"advice": {"timeout": 30000.5}}) == 30000
    for odd in ({}, {"advice": 1}, {"advice": {"timeout": "1"}}, {"advice": {"timeout": True}}):
        assert messages.client_timeout_ms(odd) is None
    assert messages.ext_token({"ext": {"token": "t"}}) == "t"
    assert messages.ext_token({"ext": {"token": 5}}) is None and messages.ext_token({"ext": []}) is None


@pytest.mark.parametrize("name", ["cb", "__jsonp12__", "jQuery123_456", "a.b.c", "$x"])
def test_jsonp_callback_names(name):
    assert messages.check_callback(name) == name


@pytest.mark.parametrize("name", ["", "1a", "a b", "a(1)", "a;b", "a..b", "a.", "x" * 65, "<script>"])
def test_jsonp_callback_names_refused(name):
    with pytest.raises(messages.BadBayeux):
        messages.check_callback(name)

"""Self-certifying client ids (issue 13): a private channel is read only by a request
that proves it is that client. Real servers over real HTTP, plus the id format and the
service's choice of the client id."""
import base64
import hmac
import http.client
import json
import re
from urllib.parse import quote

import pytest

from geventcomet import Config, clientid, protocol
from geventcomet.backends import open_backend
from geventcomet.backends.memory import MemoryBackend
from geventcomet.service import CometService

from .helpers import Comet

SECRET_DATA = "for the victim only"


def forged(client_id: str, secret: bytes = b"another server's secret") -> str:
    """The same random part signed (as the contract says) with another secret."""
    random_part = client_id[:16]
    return random_part + base64.urlsafe_b64encode(hmac.digest(secret, random_part.encode(), "sha256"))[:22].decode()


def get(url: str, path: str, headers: dict | None = None, until: bytes = b"") -> tuple[int, bytes]:
    """One GET: the status and the body (of a 200 stream, what arrived until ``until``)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        reply = conn.getresponse()
        if reply.status != 200 or not until:
            return reply.status, reply.read()
        body = b""
        while until not in body:
            chunk = reply.read1(65536)
            assert chunk, body
            body += chunk
        return reply.status, body
    finally:
        conn.close()


def assert_refused(status: int, body: bytes) -> None:
    assert status == 403, body
    doc = json.loads(body)  # strict JSON
    assert doc["auth"] == "client" and doc["error"]
    assert SECRET_DATA.encode() not in body and b"@" not in body


@pytest.fixture
def victim(server, comet):
    """A registered client (its id minted by the server) with one private event waiting."""
    first = comet.register("news", timeout=0)
    assert comet.notify(client=first["client"], data=SECRET_DATA)["id"] == 1
    return first


# -- the id ------------------------------------------------------------------

def test_a_minted_id_is_38_url_safe_characters_that_verify_only_under_its_secret():
    secret = b"k" * 32
    minted = {clientid.mint(secret) for _ in range(200)}
    assert len(minted) == 200
    for client_id in minted:
        assert re.fullmatch(r"[A-Za-z0-9_-]{38}", client_id) and protocol.CLIENT_RE.match(client_id)
        assert clientid.verify(secret, client_id)
        assert not clientid.verify(b"other", client_id)
    one = minted.pop()
    flipped = one[:-1] + ("A" if one[-1] != "A" else "B")
    for bad in (flipped, one[:-1], one + "x", "admin", "", "é" * 38, forged(one, secret=b"other")):
        assert not clientid.verify(secret, bad)


def test_client_ids_remember_only_what_verified_and_stay_bounded():
    ids = clientid.ClientIds(b"s", max_remembered=3)
    minted = [ids.mint() for _ in range(5)]
    assert list(ids.verified) == minted[2:]  # the oldest forgotten
    assert all(ids.verify(c) for c in minted)  # a forgotten one verifies again (one HMAC)
    assert not ids.verify("guessed") and "guessed" not in ids.verified


# -- over HTTP ---------------------------------------------------------------

def test_a_minted_id_verifies_and_keeps_its_private_channel(server, comet, victim):
    client = victim["client"]
    assert clientid.verify(server.app.backend.client_secret(), client)
    reply = comet.register("news", client=client, since=victim["cursor"], timeout=5)
    assert reply["client"] == client
    assert reply["events"] == [{"channel": "@" + client, "id": 1, "data": SECRET_DATA}]


@pytest.mark.parametrize("claim", ["admin", "guessed", "another secret"])
@pytest.mark.parametrize("path", ["/register", "/stream"])
def test_a_client_id_the_server_did_not_mint_gets_403_and_nothing(server, victim, claim, path):
    client = {"admin": "admin", "guessed": victim["client"][:16] + "A" * 22,
              "another secret": forged(victim["client"])}[claim]
    assert_refused(*get(server.url, f"{path}?channel=news&timeout=0&client={client}"))


@pytest.mark.parametrize("how", ["since", "since-without-client", "header", "last_event_id"])
def test_a_cursor_naming_an_unproven_private_channel_gets_403_and_nothing(server, comet, victim, how):
    mine = comet.register("news", timeout=0)["client"]
    raw = f"{victim['epoch']}~news~0~@{forged(victim['client'])}~0"
    cursor = quote(raw, safe="~")
    if how == "since":
        refused = get(server.url, f"/register?channel=news&timeout=0&client={mine}&since={cursor}")
    elif how == "since-without-client":
        refused = get(server.url, f"/register?channel=news&timeout=0&since={cursor}")
    elif how == "header":
        refused = get(server.url, "/stream?channel=news", {"Last-Event-ID": raw})
    else:
        refused = get(server.url, f"/stream?channel=news&last_event_id={cursor}")
    assert_refused(*refused)


def test_a_stream_resuming_from_its_own_cursor_keeps_its_id(server, comet, victim):
    status, body = get(server.url, "/stream?channel=news",
                       {"Last-Event-ID": f"{victim['epoch']}~news~0~@{victim['client']}~0"},
                       until=SECRET_DATA.encode())
    assert status == 200, body
    assert f'"client":"{victim["client"]}"'.encode() in body and SECRET_DATA.encode() in body


def test_an_id_from_another_process_without_a_shared_secret_is_refused(start_server):
    one, other = Comet(start_server().url), Comet(start_server().url)
    client = one.register("news", timeout=0)["client"]
    assert other.register("news", client=client, timeout=0, expect=403)["auth"] == "client"


def test_with_client_secret_ids_minted_by_one_server_verify_on_another(start_server):
    one = Comet(start_server(client_secret="shared key").url)
    other = Comet(start_server(client_secret="shared key").url)
    client = one.register("news", timeout=0)["client"]
    assert clientid.verify(b"shared key", client)
    assert other.register("news", client=client, timeout=0)["client"] == client


def test_a_restarted_sqlite_server_accepts_the_ids_it_minted(start_server, tmp_path):
    config = Config(backend=f"sqlite://{tmp_path}/ids.db")
    first = start_server(backend=open_backend(config))
    client = Comet(first.url).register("news", timeout=0)["client"]
    first.stop()  # releases the file
    again = start_server(backend=open_backend(config))
    assert Comet(again.url).register("news", client=client, timeout=0)["client"] == client


def test_two_processes_on_one_redis_accept_each_others_ids(start_server, redis_url):
    a, b = (open_backend(Config(backend=redis_url)) for _ in range(2))
    assert a.client_secret() == b.client_secret()
    one, other = Comet(start_server(backend=a).url), Comet(start_server(backend=b).url)
    client = one.register("news", timeout=0)["client"]
    assert other.register("news", client=client, timeout=0)["client"] == client


# -- the service's choice (the token engineer passes a verified token's sub) ---------------

@pytest.fixture
def service():
    config = Config()
    made = CometService(config, MemoryBackend(config))
    yield made
    made.close()


def subscribe(service, query: str, sub: str | None = None):
    return service.subscribe(service.parse_register(query), sub=sub)


def test_a_tokens_sub_is_the_client_and_no_other_id_may_be_named(service):
    client, channels, _ = subscribe(service, "channel=a", sub="user-17")
    assert (client, channels) == ("user-17", ("a", "@user-17"))
    assert subscribe(service, "channel=a&client=user-17&since=e~@user-17~3", sub="user-17")[2]["@user-17"] == 3
    minted = subscribe(service, "channel=a")[0]
    for query, sub in ((f"channel=a&client={minted}", "user-17"), ("channel=a", "no/slash"),
                       ("channel=a&since=e~@admin~0", "user-17"), ("channel=a&client=user-17", None)):
        with pytest.raises(Exception) as refused:
            subscribe(service, query, sub)
        assert (refused.value.status, refused.value.kind) == (403, "client")


def test_a_cursor_naming_another_verified_client_is_never_read(service):
    other = subscribe(service, "channel=a")[0]  # its id is its credential: no refusal, and not read
    client, channels, positions = subscribe(service, f"channel=a&since=e~a~1~@{other}~5")
    assert client != other and "@" + other not in channels and "@" + other not in positions

"""loadclient against real servers: the in-process geventcomet, and a double that drops events."""
from __future__ import annotations

import json
import os
import re
import sys
import time
from urllib.parse import parse_qs

import gevent
import pytest
from gevent import select, subprocess
from gevent.event import Event
from gevent.pywsgi import WSGIServer
from gevent.server import StreamServer

from loadclient import Report, run
from loadclient.__main__ import build_parser
from loadclient.fakeclient import FakeClient
from loadclient.histogram import Histogram
from loadclient.httpconn import Connection, split_url
from loadclient.notifier import Notifier


def test_a_few_hundred_clients_get_every_event_once_in_order(server):
    report = run(server.url, clients=300, duration=2.0, channels=4, notify_rate=200,
                 poll_timeout=5, progress=0, accept_short=True)  # a loaded machine may fall short
    print(report.format_text())
    assert report.ready == report.clients == 300
    assert report.requests == report.responses
    assert report.lost == 0 and report.duplicated == 0 and report.recovered_false == 0
    assert report.events_sent > 0  # how many depends on the machine; the counts below must agree
    assert report.events_received == report.events_sent * 300 // 4
    assert report.end_markers_received == 300
    assert report.ok and report.exit_code() == 0


def test_several_channels_per_client_and_two_processes(server):
    report = run(server.url, clients=60, duration=1.0, channels=6, channels_per_client=3,
                 notify_rate=120, poll_timeout=5, progress=0, procs=2)
    print(report.format_text())
    assert report.procs == 2 and report.ready == 60
    assert report.requests == report.responses
    assert report.lost == 0 and report.duplicated == 0
    # each channel is polled by 60 * 3 / 6 = 30 clients
    assert report.events_received == report.events_sent * 30
    assert report.ok


def test_the_first_events_of_a_channel_have_latencies_of_their_own(server):
    """A fan-out run tells its first notify from the next: seqs 1 and 2, merged over processes."""
    report = run(server.url, clients=40, duration=1.0, channels=1, notify_rate=50, notify_count=2,
                 poll_timeout=5, progress=0, procs=2)
    assert report.ok and report.events_sent == 2
    assert sorted(report.latency_by_seq) == [1, 2]
    assert [h.count for h in report.latency_by_seq.values()] == [40, 40]
    assert sum(h.count for h in report.latency_by_seq.values()) == report.latency.count
    assert set(report.to_dict()["latency_ms_by_seq"]) == {"1", "2"}
    # notify -> read by the client includes notify -> arrival: never shorter
    assert [h.count for h in report.handled_latency_by_seq.values()] == [40, 40]
    assert report.handled_latency.max_s >= report.latency.max_s > 0
    assert report.unstamped < report.responses // 2  # the kernel stamps them once timestamping is on


def _stats_reply(conn: Connection):
    """Send one ``GET /stats``; (time sent, time its bytes were readable, the reply)."""
    sent = time.time()
    conn.send(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
    readable, _, _ = select.select([conn.sock], [], [], 5.0)  # wait for the reply's bytes, bounded
    assert readable, "no reply within 5 s"
    seen = time.time()
    reply = conn.read_reply()
    assert reply.status == 200
    return sent, seen, reply


def test_a_reply_is_stamped_when_it_arrives_not_when_it_is_read(server):
    """The kernel's receive stamp: a reply read late still shows when it came in.

    Linux stamps received segments only while some socket on the host wants stamps, and
    it turns the (host-wide) switch on a moment after the first one asks, from a deferred
    work item: how many early replies go unstamped depends on the kernel's scheduling and
    on other processes. So the test first waits (bounded) for a stamped reply; from then on
    its own socket keeps the switch on, and every reply must be stamped at arrival.
    """
    conn = Connection(*split_url(server.url))
    try:
        for _ in range(2000):  # bounded: each is one request, ~0.1 ms
            if _stats_reply(conn)[2].stamped:
                break
        else:
            pytest.fail("no reply stamped by the kernel in 2000 requests")
        for _ in range(20):
            sent, seen, reply = _stats_reply(conn)
            assert reply.stamped
            assert sent <= reply.arrived <= seen  # a stamp taken at read time would be after `seen`
    finally:
        conn.close()


def test_nice_lowers_the_client_processes_only(server):
    niceness = {}

    def on_ready(the_run):
        for group in the_run.groups:
            niceness[group.proc.pid] = os.getpriority(os.PRIO_PROCESS, group.proc.pid)

    report = run(server.url, clients=20, duration=0.3, notify_rate=20, poll_timeout=5, progress=0,
                 procs=2, nice=3, on_ready=on_ready)
    assert report.ok
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    assert list(niceness.values()) == [min(mine + 3, 19)] * 2
    with pytest.raises(ValueError, match="--procs 2"):
        run(server.url, clients=1, procs=1, nice=3, progress=0)


class DroppingServer:
    """A test double speaking the protocol, which acknowledges every notify but stores
    only four events in five (ids 3, 8, 13 ... are dropped on the floor). With ``drop``
    False it stores them all; ``notify_s`` makes each notify take that long (a slow server)."""

    def __init__(self, drop: bool = True, notify_s: float = 0.0) -> None:
        self.drop, self.notify_s = drop, notify_s
        self.events: dict[str, list[tuple[int, object]]] = {}
        self.ids: dict[str, int] = {}
        self.changed = Event()
        self.server = WSGIServer(("127.0.0.1", 0), self.app, log=None)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def app(self, environ, start_response):
        if environ["PATH_INFO"] == "/notify":
            body = json.loads(environ["wsgi.input"].read())
            channel = body["channel"]
            seq = self.ids[channel] = self.ids.get(channel, 0) + 1
            if self.notify_s:
                gevent.sleep(self.notify_s)  # the slow server being modelled, not a synchronisation
            if not self.drop or seq % 5 != 3:
                self.events.setdefault(channel, []).append((seq, body["data"]))
                changed, self.changed = self.changed, Event()
                changed.set()
            return self.reply(start_response, {"channel": channel, "id": seq, "woken": 0})
        query = parse_qs(environ["QUERY_STRING"])
        channels = query["channel"]
        since = json.loads(query["since"][0]) if "since" in query else {c: self.ids.get(c, 0) for c in channels}
        deadline = time.monotonic() + float(query.get("timeout", ["5"])[0])
        while True:
            changed = self.changed
            found = [{"channel": c, "id": i, "data": d} for c in channels
                     for i, d in self.events.get(c, []) if i > since[c]]
            if found or not changed.wait(max(0.0, deadline - time.monotonic())):
                break
        for event in found:
            since[event["channel"]] = max(since[event["channel"]], event["id"])
        return self.reply(start_response, {"events": found, "cursor": json.dumps(since),
                                           "timeout": not found, "recovered": True,
                                           "client": "double", "epoch": "e"})

    @staticmethod
    def reply(start_response, body):
        data = json.dumps(body).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(data)))])
        return [data]


def _loadclient(*args: str, stdin=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "loadclient", *args], stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_server_that_drops_events_is_caught_and_fails_the_run(tmp_path):
    double = DroppingServer()
    try:
        out = tmp_path / "report.json"
        proc = _loadclient(double.url, "--clients", "20", "--duration", "1", "--channels", "2",
                           "--notify-rate", "40", "--poll-timeout", "2", "--progress", "0",
                           "--json", str(out))
        stdout, stderr = proc.communicate(timeout=40)
    finally:
        double.server.stop()
    assert proc.returncode == 1, stdout + stderr
    report = json.loads(out.read_text())
    assert report["lost"] > 0 and not report["ok"]
    assert report["duplicated"] == 0
    # every dropped event is lost by each of the 10 clients of its channel
    dropped = sum(ids // 5 + (ids % 5 >= 3) for ids in double.ids.values())
    assert report["lost"] == dropped * 10
    assert "lost" in stdout and "FAILED" in stdout


def _expect(proc, text: str, timeout: float = 15) -> str:
    """Read the console's stdout until a line contains ``text`` (bounded)."""
    with gevent.Timeout(timeout, AssertionError(f"no line with {text!r}")):
        while True:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"console ended before {text!r}: {proc.stderr.read()}")
            if text in line:
                return line


def test_console_commands_driven_through_stdin(server, tmp_path):
    out = tmp_path / "console.json"
    proc = _loadclient(server.url, "--interactive", "--clients", "0", "--progress", "0",
                       "--poll-timeout", "3", "--duration", "50", "--json", str(out),
                       stdin=subprocess.PIPE)
    try:
        def send(line: str) -> None:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()

        _expect(proc, "loadclient console")
        send("add 3")
        _expect(proc, "polling: 3 of 3 clients")
        send("notify 0 hello")
        assert "#1" in _expect(proc, "notified")
        send("addslow 1")
        _expect(proc, "polling: 4 of 4 clients")
        send("remove 1")
        _expect(proc, "removed 1 clients")
        send("stats")
        assert "clients 4/4" in _expect(proc, "stats:")
        assert '"waiting"' in _expect(proc, "server:")
        send("bogus")
        _expect(proc, "unknown command")
        send("quit")
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, proc.stderr.read()
    report = json.loads(out.read_text())
    assert report["events_received"] == 3 and report["lost"] == 0
    assert report["unanswered"] == 0 and report["abandoned"] == 1


class _Group:
    def __init__(self) -> None:
        self.report = Report()


def test_sequence_check_counts_gaps_repeats_and_owed_tail():
    client = FakeClient(_Group(), conn=None, channels=("a", "b"))

    def events(channel, *seqs):
        return {"events": [{"channel": channel, "id": s, "data": {"s": s, "t": time.time()}}
                           for s in seqs], "cursor": "c"}

    client._apply(events("a", 1, 2, 4), time.time())  # 3 missing
    client._apply(events("a", 4, 5), time.time())  # 4 again
    client.floors[1] = 2  # joined b after its event 2 began: 1 and 2 are not owed
    client._apply(events("b", 3), time.time())
    report = client.group.report
    assert (report.lost, report.duplicated, report.events_received) == (1, 1, 5)
    assert client.owed({"a": 7, "b": 3}) == 2


def test_histogram_percentiles_are_within_two_percent():
    hist = Histogram()
    for ms in range(1, 1001):
        hist.add(ms / 1000)
    assert hist.percentile(50) == pytest.approx(0.5, rel=0.02)
    assert hist.percentile(99) == pytest.approx(0.99, rel=0.02)
    assert hist.summary_ms()["max"] == 1000.0


def test_a_run_that_publishes_too_few_events_says_short_and_why_and_exits_3():
    """A server that takes 0.1 s per notify cannot take 50/s on one channel: the run says so."""
    slow = DroppingServer(drop=False, notify_s=0.1)
    try:
        proc = _loadclient(slow.url, "--clients", "4", "--duration", "3", "--notify-rate", "50",
                           "--poll-timeout", "3", "--progress", "0.5")
        stdout, stderr = proc.communicate(timeout=60)
        accepted = _loadclient(slow.url, "--clients", "2", "--duration", "0.5", "--notify-rate", "50",
                               "--poll-timeout", "3", "--progress", "0", "--accept-short")
        accepted_out, accepted_err = accepted.communicate(timeout=60)
    finally:
        slow.server.stop()
    assert proc.returncode == 3, stdout + stderr
    assert "of 50/s asked" in stdout and "SHORT" in stdout and "why short" in stdout
    assert "result             SHORT" in stdout
    assert "| SHORT: notifying" in stderr  # the progress line warned while it ran
    assert " sent " in stderr and " received " in stderr
    assert accepted.returncode == 0, accepted_out + accepted_err
    assert "result             OK (short, accepted)" in accepted_out


def test_short_is_judged_against_the_rate_and_the_count_asked():
    report = Report(events_sent=20, duration_s=1.0, notify_rate=100, notify_connections=1,
                    notify_busy_s=1.0)
    assert report.events_asked == 100 and report.short and report.exit_code() == 3
    assert report.result == "SHORT" and "at most 20/s" in report.why_short()
    report.notify_count = 21  # asked for 21 events in all: 20 is within 90 %
    assert not report.short and report.exit_code() == 0 and report.result == "OK"
    report.notify_count, report.accept_short = None, True
    assert report.exit_code() == 0 and report.result == "OK (short, accepted)"
    report.lost = 1
    assert report.exit_code() == 1 and report.result == "FAILED"
    assert not Report(events_sent=0, duration_s=5.0, notify_rate=0).short  # nothing asked
    assert not Report(events_sent=1, duration_s=5.0, notify_rate=-1).short  # "max"


def test_a_server_that_is_not_running_is_named_at_once(tmp_path):
    import socket
    holder = socket.socket()  # a port bound but not listening: connections are refused
    holder.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{holder.getsockname()[1]}"
    try:
        proc = _loadclient(url, "--clients", "5", "--duration", "30", "--notify-rate", "10")
        stdout, stderr = proc.communicate(timeout=20)  # it used to retry for the whole 30 s
    finally:
        holder.close()
    assert proc.returncode == 1
    assert stderr.strip() == f"python -m loadclient: nothing listens at {url} (connection refused)"
    assert stdout == ""


def test_help_names_every_default_and_the_program_as_it_was_called():
    text = build_parser().format_help()
    options = text.split("\noptions:\n", 1)[1].split("\n\n", 1)[0]
    entries = re.split(r"\n(?=  -)", options)
    assert len(entries) == text.count("\n  -") > 20  # one entry per flag: the split saw them all
    for entry in entries[1:]:  # after -h
        assert "(default" in " ".join(entry.split()), entry
    as_script = subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv = ['/venv/bin/geventcomet-load', '--help']; "
                               "from loadclient.__main__ import main; main()"],
        capture_output=True, text=True, timeout=30)
    assert as_script.stdout.startswith("usage: geventcomet-load "), as_script.stdout[:200]
    as_module = subprocess.run([sys.executable, "-m", "loadclient", "--help"], capture_output=True,
                               text=True, timeout=30)
    assert as_module.stdout.startswith("usage: python -m loadclient "), as_module.stdout[:200]
    bad = subprocess.run([sys.executable, "-m", "loadclient", "http://127.0.0.1:port"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "must be a number from 1 to 65535" in bad.stderr


class PipelineServer:
    """A raw HTTP/1.1 notify endpoint that records each channel's ``s`` in the order it stores
    them, stores an ``Idempotency-Key`` once, and hangs up on the 20th request unanswered."""

    HANG_UP_AT = 20

    def __init__(self, close_each: bool = False) -> None:
        self.close_each = close_each  # answer one request per connection, with Connection: close
        self.stored: list[int] = []
        self.keys: set[str] = set()
        self.requests = 0
        self.most_in_one_read = 0
        self.server = StreamServer(("127.0.0.1", 0), self.handle)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def handle(self, sock, _address) -> None:
        buf = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                buf += chunk
                replies, in_this_read = b"", 0
                while b"\r\n\r\n" in buf:
                    head, _, rest = buf.partition(b"\r\n\r\n")
                    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
                    if len(rest) < length:
                        break
                    body, buf = rest[:length], rest[length:]
                    self.requests += 1
                    in_this_read += 1
                    if self.requests == self.HANG_UP_AT:
                        sock.sendall(replies)
                        return  # the rest of what was sent gets no reply
                    key = re.search(rb"Idempotency-Key: (\S+)", head).group(1).decode()
                    if key not in self.keys:
                        self.keys.add(key)
                        self.stored.append(json.loads(body)["data"]["s"])
                    reply = b'{"channel":"c","id":1,"woken":0}'
                    close = b"Connection: close\r\n" if self.close_each else b""
                    replies += b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (close, len(reply), reply)
                    if self.close_each:
                        sock.sendall(replies)
                        return
                self.most_in_one_read = max(self.most_in_one_read, in_this_read)
                sock.sendall(replies)
        finally:
            sock.close()


def test_pipelined_notifies_keep_their_order_through_a_dropped_connection():
    """Notifies sent several per write arrive in order; after a hang-up mid-batch the unanswered
    ones are sent again, in order, with their keys (stored once each)."""
    double = PipelineServer()
    report = Report()
    notifier = Notifier(double.url, ["c"], report, connections=1, pipeline=16)
    try:
        notifier.start(rate=100000, count=200)  # far ahead of the connection: batches form
        assert notifier.join(30), "the notifier did not finish its 200 events in 30 s"
        notifier.stop()
    finally:
        notifier.close()
        double.server.stop()
    assert double.stored == list(range(1, 201))  # each once, in order
    assert double.most_in_one_read > 1  # it did pipeline
    assert report.notify_pipeline == 16 and notifier.acked == {"c": 200}


def test_pipelining_stops_against_a_server_that_closes_after_each_reply():
    double = PipelineServer(close_each=True)
    double.HANG_UP_AT = 0
    report = Report()
    notifier = Notifier(double.url, ["c"], report, connections=1, pipeline=16)
    try:
        notifier.start(rate=100000, count=60)
        assert notifier.join(30), "the notifier did not finish its 60 events in 30 s"
        notifier.stop()
        notifier.send_end_markers()  # what the last batch left pending goes first
    finally:
        notifier.close()
        double.server.stop()
    assert report.notify_pipeline == 1 and report.notify_errors == 0 and report.end_markers_sent == 1
    # the events and the end marker, each once, in order (the batch that found the server closing
    # had made a few events ahead: they went out in later turns, in place of new ones)
    assert double.stored == list(range(1, report.events_sent + 2)) and report.events_sent >= 45


def test_the_bayeux_flag_runs_bayeux_sessions_from_the_command_line(server):
    """``--bayeux``: the same run and report over /bayeux (sessions counted by the server)."""
    proc = _loadclient(server.url, "--bayeux", "--clients", "20", "--duration", "1", "--notify-rate", "20",
                       "--channels", "2", "--progress", "0")
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stdout + stderr
    assert "result             OK" in stdout and "lost               0" in stdout
    assert server.app.service.snapshot()["bayeux"]["sessions"] >= 20

"""The interactive console (``--interactive``), like the original simulator's.

Commands, one per line on stdin (answers on stdout):

- ``add N [RATE]``: start N clients, RATE per second (default: ``--ramp``, 0 = at once);
  prints ``polling: X of Y clients`` when they all poll;
- ``addslow N``: start N clients, one every 2 s (the original ``addsyncclients``);
- ``remove N``: stop the N newest clients (their open polls count as abandoned);
- ``notify CHANNEL TEXT``: publish one event (CHANNEL is a name or a channel number);
- ``stats``: the progress line and the server's ``/stats``;
- ``quit`` (or end of input, or ``--duration`` elapsed): end markers, report, exit.

Clients joining while events are published are only owed events published after
they took their first cursor (see :mod:`loadclient.fakeclient`).
"""
from __future__ import annotations

import json
import sys
import time

import gevent
from gevent.fileobject import FileObject

from .httpconn import Connection, HTTPError, split_url
from .report import Report
from .runner import Options, Run

#: ``addslow``: one client every this many seconds.
SLOW_INTERVAL_S = 2.0
#: How long ``add`` waits for its clients before saying how many poll.
READY_REPORT_BOUND_S = 120.0
HELP = "commands: add N [rate] | addslow N | remove N | notify CHANNEL TEXT | stats | quit"


class Console:
    """Reads commands from ``stdin`` and applies them to one :class:`~loadclient.runner.Run`."""

    def __init__(self, options: Options, stdin=None, stdout=None) -> None:
        if options.procs != 1:
            raise ValueError("the console runs in one process (--procs 1)")
        self.options = options
        self.stdin = stdin if stdin is not None else FileObject(sys.stdin.fileno(), "r", close=False)
        self.stdout = stdout or sys.stdout
        self.run_ = Run(options)
        self._watchers: list[gevent.Greenlet] = []

    def say(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def run(self) -> Report:
        """Serve commands until ``quit``, end of input or ``duration``; the final report."""
        the_run = self.run_
        the_run.start()
        group = the_run.groups[0]
        if self.options.clients:
            self._report_ready(group)
        start = time.monotonic()
        the_run.notifier.start(self.options.notify_rate, self.options.notify_count)
        self.say(f"loadclient console; channels {the_run.channels[0]} .. {the_run.channels[-1]}; {HELP}")
        reader = gevent.spawn(self._read_commands, group)
        the_run.stop_requested.wait(self.options.duration)
        reader.kill()
        for watcher in self._watchers:
            watcher.kill()
        the_run.notifier.stop()
        the_run.duration_s = time.monotonic() - start
        self.say("finishing")
        return the_run.finish()

    def _read_commands(self, group) -> None:
        try:
            for line in self.stdin:
                words = line.split(None, 2)
                if not words:
                    continue
                try:
                    if not self._command(group, words):
                        break
                except (ValueError, IndexError) as exc:
                    self.say(f"error: {exc}; {HELP}")
        finally:
            self.run_.stop_requested.set()

    def _command(self, group, words: list[str]) -> bool:
        name = words[0].lower()
        if name == "quit":
            return False
        if name == "add":
            rate = float(words[2]) if len(words) > 2 else self.options.ramp
            group.add(int(words[1]), rate)
            self.say(f"adding {words[1]} clients")
            self._report_ready(group)
        elif name == "addslow":
            group.add(int(words[1]), 1.0 / SLOW_INTERVAL_S)
            self.say(f"adding {words[1]} clients, one every {SLOW_INTERVAL_S:g} s")
            self._report_ready(group)
        elif name == "remove":
            self.say(f"removed {group.remove(int(words[1]))} clients")
        elif name == "notify":
            channel = self._channel(words[1])
            ok = self.run_.notifier.publish(channel, {"text": words[2] if len(words) > 2 else ""})
            seq = self.run_.notifier.started.get(channel, 0)
            self.say(f"notified {channel} #{seq}" if ok else f"notify to {channel} failed")
        elif name == "stats":
            self.say("stats: " + self.run_.snapshot().progress_line())
            self.say("server: " + self._server_stats())
        elif name == "help":
            self.say(HELP)
        else:
            raise ValueError(f"unknown command {name!r}")
        return True

    def _channel(self, word: str) -> str:
        channels = self.run_.channels
        if word.isdigit() and int(word) < len(channels):
            return channels[int(word)]
        return word

    def _report_ready(self, group) -> None:
        def wait() -> None:
            group.ready.wait(READY_REPORT_BOUND_S)
            self.say(f"polling: {group.report.ready} of {group.report.clients} clients")
        self._watchers.append(gevent.spawn(wait))

    def _server_stats(self) -> str:
        host, port = split_url(self.options.url)
        conn = Connection(host, port, timeout_s=10)
        try:
            reply = conn.request("GET", "/stats")
            return json.dumps(json.loads(reply.body), sort_keys=True)
        except (HTTPError, ValueError) as exc:
            return f"unavailable ({exc})"
        finally:
            conn.close()

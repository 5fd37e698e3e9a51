"""``python -m loadclient URL [flags]``: a bounded load run, or ``--interactive`` console.

Also installed as the ``geventcomet-load`` console script (``main``). Prints a
progress line every second on stderr, then the report on stdout (and as JSON with
``--json FILE``). Exit status: 0 if every request was answered and no event was
lost or duplicated, 1 otherwise (or if nothing listens at the URL), 2 on bad
usage, 3 if the run was correct but SHORT: it published under 90 % of the events
asked (``--accept-short`` accepts that).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from .report import Report
from .resources import settle
from .runner import Options, ServerUnreachable, run


def _rate(raw: str) -> float:
    return -1.0 if raw == "max" else float(raw)


def program_name() -> str:
    """How the user started us: ``geventcomet-load`` (the console script) or ``python -m loadclient``."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m loadclient" if invoked in ("", "__main__.py", "-c") else invoked


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The flags; every help text names its default (tested), tokens' values never shown."""
    p = argparse.ArgumentParser(prog=prog or program_name(),
                                description="Fake long-poll clients against a geventcomet server: "
                                            "every request answered, no event lost, duplicated or "
                                            "reordered. See loadclient/README.md.",
                                epilog="Exit status: 0 OK; 1 events lost or duplicated, requests "
                                       "unanswered, clients failed, or nothing listens at URL; 2 bad "
                                       "usage; 3 SHORT (under 90% of the events asked were "
                                       "published; --accept-short makes it 0).")
    add = p.add_argument
    add("url", help="server base URL, e.g. http://127.0.0.1:8080")
    add("--clients", type=int, default=100, help="fake clients (default: %(default)s)")
    add("--ramp", type=float, default=0.0,
        help="clients started per second; 0 = as fast as possible (default: %(default)s)")
    add("--duration", type=float, default=None,
        help="seconds of notifying once all clients poll (default: 10); with --interactive: "
             "the console's time limit (default: 3600)")
    add("--channels", type=int, default=1,
        help="channels; client i polls channel i mod K. Each channel's notifies go one at a time, "
             "so a high --notify-rate needs several (default: %(default)s)")
    add("--channels-per-client", type=int, default=1, help="channels each client polls (default: %(default)s)")
    add("--notify-rate", type=_rate, default=0.0,
        help="events/s over all channels, round-robin; 0 = none; 'max' = as fast as the server "
             "accepts (default: %(default)s)")
    add("--notify-count", type=int, default=None, help="stop after this many events (default: no bound)")
    add("--notify-connections", type=int, default=32,
        help="notify connections in parallel, each owning a share of the channels (default: %(default)s)")
    add("--notify-pipeline", type=int, default=1,
        help="notifies one connection may send before reading their replies (HTTP/1.1 pipelining; "
             "a channel's notifies still arrive in order unless one is refused while later ones are "
             "stored, which the run then counts as lost; 1: one at a time) (default: %(default)s)")
    add("--accept-short", action="store_true",
        help="exit 0 even if under 90%% of the events asked were published (default: exit 3, SHORT)")
    add("--poll-timeout", type=float, default=20.0, help="timeout each poll asks for, s (default: %(default)s)")
    add("--think", type=float, default=0.0,
        help="pause after each reply before polling again, s (default: %(default)s)")
    add("--procs", type=int, default=1, help="processes holding the clients (default: %(default)s)")
    add("--nice", type=int, default=0,
        help="with --procs: lower the client processes' CPU priority by this much, so that on the "
             "server's machine they take only the CPU it leaves (default: %(default)s)")
    add("--source-ips", default=None,
        help="comma-separated local addresses to bind (default: none; with --procs > 1 against "
             "loopback: 127.0.0.2, 127.0.0.3 ...)")
    add("--channel-prefix", default=None, help="channel name prefix (default: lc-RUNID-, unique per run)")
    add("--no-idempotency", dest="idempotency", action="store_false",
        help="send notifies without an Idempotency-Key (default: with one)")
    add("--token", default=os.environ.get("LOADCLIENT_TOKEN") or None,
        help="bearer token sent as Authorization: Bearer on every poll and notify, for a server "
             "with --token-secret (default: $LOADCLIENT_TOKEN, else none; a token on the command "
             "line is visible in ps)")
    add("--notify-token", default=os.environ.get("LOADCLIENT_NOTIFY_TOKEN") or None,
        help="bearer token for the notifies instead of --token, e.g. the server's admin token "
             "(default: $LOADCLIENT_NOTIFY_TOKEN, else --token)")
    add("--progress", type=float, default=1.0,
        help="seconds between progress lines on stderr; 0 = none (default: %(default)s)")
    add("--json", dest="json_path", default=None, help="also write the report as JSON here (default: none)")
    add("--bayeux", action="store_true",
        help="fake Bayeux clients (handshake, subscribe, /meta/connect on /bayeux) instead of /register "
             "long-polls; channels /lc-RUNID/K; one process only (default: off)")
    add("--interactive", "-i", action="store_true", help="console on stdin, see README (default: off)")
    add("--log-level", default="WARNING", type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging level (default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    fields = {k: v for k, v in vars(args).items()
              if k not in ("json_path", "interactive", "log_level", "bayeux")}
    if fields["source_ips"]:
        fields["source_ips"] = [a.strip() for a in fields["source_ips"].split(",") if a.strip()]
    try:
        if args.interactive:
            from .console import Console
            fields["duration"] = args.duration if args.duration is not None else 3600.0
            report: Report = Console(Options(**fields)).run()
        else:
            fields["duration"] = args.duration if args.duration is not None else 10.0
            go = run
            if args.bayeux:
                from .bayeux import run_bayeux as go
            report = go(on_ready=lambda _run: settle(), **fields)  # this process is ours
    except ValueError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    except ServerUnreachable as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 1
    print(report.format_text(), flush=True)
    if args.json_path:
        report.write_json(args.json_path)
    return report.exit_code()


if __name__ == "__main__":
    sys.exit(main())

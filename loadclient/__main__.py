"""``python -m loadclient URL [flags]``: a bounded load run, or ``--interactive`` console.

Prints a progress line every second on stderr, then the report on stdout (and
as JSON with ``--json FILE``). Exit status: 0 if every request was answered and
no event was lost or duplicated, 1 otherwise, 2 on bad usage.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from .report import Report
from .resources import settle
from .runner import Options, run


def _rate(raw: str) -> float:
    return -1.0 if raw == "max" else float(raw)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadclient",
                                description="Fake long-poll clients against a geventcomet server.")
    p.add_argument("url", help="server base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--clients", type=int, default=100, help="fake clients (default 100)")
    p.add_argument("--ramp", type=float, default=0.0,
                   help="clients started per second (default 0: as fast as possible)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of notifying once all clients poll (default 10); "
                        "with --interactive: the console's time limit (default 3600)")
    p.add_argument("--channels", type=int, default=1, help="channels; client i polls channel i mod K")
    p.add_argument("--channels-per-client", type=int, default=1, help="channels each client polls")
    p.add_argument("--notify-rate", type=_rate, default=0.0,
                   help="events/s over all channels (default 0: none; 'max': as fast as accepted)")
    p.add_argument("--notify-count", type=int, default=None, help="stop after this many events")
    p.add_argument("--notify-connections", type=int, default=8, help="parallel notify connections")
    p.add_argument("--poll-timeout", type=float, default=20.0, help="timeout each poll asks for (s)")
    p.add_argument("--think", type=float, default=0.0,
                   help="pause after each reply before polling again, s (default 0)")
    p.add_argument("--procs", type=int, default=1, help="processes holding the clients")
    p.add_argument("--nice", type=int, default=0,
                   help="with --procs: lower the client processes' CPU priority by this much, so that "
                        "on the server's machine they take only the CPU it leaves (default 0)")
    p.add_argument("--source-ips", default=None,
                   help="comma-separated local addresses to bind (default with --procs > 1 on "
                        "loopback: 127.0.0.2, 127.0.0.3 ...)")
    p.add_argument("--channel-prefix", default=None, help="channel name prefix (default lc-RUNID-)")
    p.add_argument("--no-idempotency", dest="idempotency", action="store_false",
                   help="send notifies without an Idempotency-Key")
    p.add_argument("--token", default=os.environ.get("LOADCLIENT_TOKEN") or None,
                   help="bearer token sent as Authorization: Bearer on every poll and notify, for a "
                        "server with --token-secret (default: $LOADCLIENT_TOKEN; a token on the "
                        "command line is visible in ps)")
    p.add_argument("--notify-token", default=os.environ.get("LOADCLIENT_NOTIFY_TOKEN") or None,
                   help="bearer token for the notifies instead of --token, e.g. the server's admin "
                        "token (default: $LOADCLIENT_NOTIFY_TOKEN)")
    p.add_argument("--progress", type=float, default=1.0, help="seconds between progress lines (0: off)")
    p.add_argument("--json", dest="json_path", default=None, help="also write the report here")
    p.add_argument("--interactive", "-i", action="store_true", help="console on stdin (see README)")
    p.add_argument("--log-level", default="WARNING")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    fields = {k: v for k, v in vars(args).items() if k not in ("json_path", "interactive", "log_level")}
    if fields["source_ips"]:
        fields["source_ips"] = [a.strip() for a in fields["source_ips"].split(",") if a.strip()]
    try:
        if args.interactive:
            from .console import Console
            fields["duration"] = args.duration if args.duration is not None else 3600.0
            report: Report = Console(Options(**fields)).run()
        else:
            fields["duration"] = args.duration if args.duration is not None else 10.0
            report = run(on_ready=lambda _run: settle(), **fields)  # this process is ours
    except ValueError as exc:
        print(f"loadclient: {exc}", file=sys.stderr)
        return 2
    print(report.format_text(), flush=True)
    if args.json_path:
        report.write_json(args.json_path)
    return report.exit_code()


if __name__ == "__main__":
    sys.exit(main())

"""The ``geventcomet`` command: ``geventcomet serve [--flags]``.

This is the only module that monkey-patches (first, before anything imports
sockets); logging is configured by :func:`geventcomet.logs.configure_logging`.
The configuration is read here, at the edge (flags over ``GEVENTCOMET_*`` variables),
and the command chooses the process shape: one server process (:mod:`geventcomet.server`)
or a supervisor of ``--workers`` processes (:mod:`geventcomet.supervisor`). Either
announces where it listens to a parent that gave it a readiness pipe
(:mod:`geventcomet.ready`, ``GEVENTCOMET_READY_FD``).
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

from . import ready  # noqa: E402
from .config import ENV_PREFIX, Config, parse_value  # noqa: E402
from .logs import configure_logging  # noqa: E402

log = logging.getLogger("geventcomet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geventcomet", description="A Comet server on gevent.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server",
                                description=f"Every flag can also be set as {ENV_PREFIX}<NAME> "
                                            "(e.g. GEVENTCOMET_NOTIFY_TOKEN). Secrets: give the notify "
                                            "token as --notify-token-file PATH or GEVENTCOMET_NOTIFY_TOKEN; "
                                            "a --notify-token on the command line is visible in ps.")
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.removesuffix("_s").replace("_", "-") if f.name != "timeout_s" else "--timeout"
        env = ENV_PREFIX + f.name.upper()
        if f.type in (bool, "bool"):
            serve.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=f"{f.metadata['help']} [{env}]")
        else:
            serve.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(),
                               type=functools.partial(parse_value, f),
                               help=f"{f.metadata['help']} (default {f.default!r}) [{env}]")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    try:
        config = Config.from_env(**args)
        ready_fd = ready.take_fd()
    except (TypeError, ValueError) as exc:
        print(f"geventcomet: bad configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    log.info("configuration: %s", config.describe())
    if args.get("notify_token"):
        log.warning("the notify token was given on the command line, where ps shows it to every user "
                    "of this machine: use --notify-token-file PATH or GEVENTCOMET_NOTIFY_TOKEN instead")
    if command == "serve":
        return serve(config, ready_fd)
    return 2


def serve(config: Config, ready_fd: int | None = None) -> int:
    """One server process, or a supervisor of ``config.workers`` processes; the exit status."""
    if config.workers > 1:
        from .supervisor import run_workers
        return run_workers(config, ready_fd)
    from .server import serve as serve_one
    return serve_one(config, ready_fd=ready_fd)


if __name__ == "__main__":
    sys.exit(main())

"""The ``geventcomet`` command: ``geventcomet serve [--flags]``, ``geventcomet check-config``,
``geventcomet --version``.

This is the only module that monkey-patches (first, before anything imports sockets);
logging is configured by :func:`geventcomet.logs.configure_logging`. The configuration is
read here, at the edge (:mod:`geventcomet.config_load`: flags over ``GEVENTCOMET_*``
variables over the ``--config`` file over defaults), checked (:mod:`geventcomet.cli_checks`),
and the command chooses the process shape: one server process (:mod:`geventcomet.server`)
or a supervisor of ``--workers`` processes (:mod:`geventcomet.supervisor`). Either
announces where it listens to a parent that gave it a readiness pipe
(:mod:`geventcomet.ready`, ``GEVENTCOMET_READY_FD``).

Every mistake a user can make on the command line is one line on stderr and exit status 2,
never a traceback: argparse's own errors included (:class:`OneLineParser`).
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from typing import NoReturn  # noqa: E402

from . import __version__, ready  # noqa: E402
from .cli_checks import check_backend, check_listen  # noqa: E402
from .config import Config  # noqa: E402
from .config_env import CONFIG_ENV, ENV_PREFIX, env_of, flag_of, suggest  # noqa: E402
from .config_load import LoadError, as_dict, as_toml, describe, load  # noqa: E402
from .logs import configure_logging  # noqa: E402

log = logging.getLogger("geventcomet")

SERVE_HELP = (f"Every flag can also be set as an environment variable {ENV_PREFIX}<NAME> (shown in brackets, "
              "e.g. GEVENTCOMET_NOTIFY_TOKEN) or as a key of the --config file (the flag's name: "
              "max_timeout = 120). Flags win over variables, variables over the file. Secrets: give the "
              "notify token as --notify-token-file PATH or GEVENTCOMET_NOTIFY_TOKEN; a --notify-token on "
              "the command line is visible in ps.")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a mistake is one line: the mistake, the command's usage, where to find help."""

    def error(self, message: str) -> NoReturn:
        usage = " ".join(self.format_usage().split())  # one line, whatever argparse wrapped
        self.exit(2, f"{self.prog}: {message}; {usage} (every option: {self.prog} --help)\n")


def add_settings(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", default=None,
                        help=f"a TOML file of settings, keys named as the flags [{CONFIG_ENV}]")
    for f in dataclasses.fields(Config):
        if f.type in (bool, "bool"):
            parser.add_argument(flag_of(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None, help=f"{f.metadata['help']} (default {f.default}) [{env_of(f.name)}]")
        else:
            parser.add_argument(flag_of(f.name), dest=f.name, default=None, metavar=f.name.upper().removesuffix("_S"),
                                help=f"{f.metadata['help']} (default {f.default!r}) [{env_of(f.name)}]")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser, and each command's parser by name."""
    parser = OneLineParser(prog="geventcomet", description="A Comet server on gevent.")
    parser.add_argument("-V", "--version", action="version", version=f"geventcomet {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{serve,check-config}")
    options = "[--config PATH] [--host HOST] [--port PORT] [--backend URL] [--workers N] [OPTIONS]"
    serve_parser = commands.add_parser("serve", help="run the server", description=SERVE_HELP,
                                       usage=f"geventcomet serve {options}")
    check_parser = commands.add_parser(
        "check-config", usage=f"geventcomet check-config {options}",
        help="check the configuration, print it (with where each value came from) and exit",
        description="Takes the same flags, variables and file as serve; exits 0 if serve would accept them "
                    "(it does not try to listen), 2 if not. " + SERVE_HELP)
    for command in (serve_parser, check_parser):
        add_settings(command)
    return parser, {"serve": serve_parser, "check-config": check_parser}


def parse(argv: list[str] | None) -> tuple[str, dict]:
    """The command and its flags (field name -> text, bool or None); exits 2 on a mistake."""
    parser, commands = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would report these with the top-level usage, not the command's
        known = ["--config", "--help", *(flag_of(f.name) for f in dataclasses.fields(Config))]
        hint = suggest(unknown[0].split("=", 1)[0], known) if unknown[0].startswith("-") else ""
        commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    flags = vars(args)
    return flags.pop("command"), flags


def main(argv: list[str] | None = None) -> int:
    command, flags = parse(argv)
    ready_fd = ready.take_fd()
    try:
        loaded = load(flags)
        check_backend(loaded)
        if command == "serve":
            check_listen(loaded)
    except LoadError as exc:
        print(f"geventcomet: {exc.heading}: {exc}", file=sys.stderr)
        ready.withdraw(ready_fd)
        return 2
    config = loaded.config
    if command == "check-config":
        for warning in loaded.warnings:
            print(f"geventcomet: warning: {warning}", file=sys.stderr)
        sys.stdout.write(as_toml(loaded))
        return 0
    configure_logging(config.log_level, config.log_format)
    for warning in loaded.warnings:
        log.warning("%s", warning, extra={"event": "configuration-warning"})
    log.info("configuration: %s", describe(loaded), extra={"event": "configuration", "settings": as_dict(loaded)})
    if loaded.sources["notify_token"].startswith("flag"):
        log.warning("the notify token was given on the command line, where ps shows it to every user "
                    "of this machine: use --notify-token-file PATH or GEVENTCOMET_NOTIFY_TOKEN instead")
    return serve(config, ready_fd)


def serve(config: Config, ready_fd: int | None = None) -> int:
    """One server process, or a supervisor of ``config.workers`` processes; the exit status."""
    if config.workers > 1:
        from .supervisor import run_workers
        return run_workers(config, ready_fd)
    from .server import serve as serve_one
    return serve_one(config, ready_fd=ready_fd)


if __name__ == "__main__":
    sys.exit(main())

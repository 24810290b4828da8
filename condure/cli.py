"""Command line: argv -> :class:`Config` -> the supervisor.

The parser is built from :data:`condure.options.OPTIONS`. Checks run in
Condure's order so that, given several mistakes, the same one is reported:

1. syntax (unknown option, missing value, an option given twice): usage on
   stderr, exit status 2 (argparse);
2. values, in table order, then the instance id, the worker count, the
   connection totals, the listeners, and the ZeroMQ endpoint bases: logged
   as ``[ERR]`` on stdout, status 1.

``--sizes`` comes between the two, as in Condure: once the syntax is right
it prints its figures (:mod:`condure.sizes`) and exits 0, whatever the
values of the other options.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from condure import __version__, log
from condure.config import (
    Config,
    ConfigError,
    ListenSpec,
    parse_listen,
    parse_uint,
    stream_endpoints,
)
from condure.options import (
    ACTION,
    DEFAULT_LISTEN,
    FLAG,
    OCTAL,
    OPTIONS,
    UINT,
    Option,
)

WORKERS_MAX = 1024
CONNS_MAX = 10_000_000
DESCRIPTION = "HTTP/WebSocket connection manager"

_logger = log.get_logger("condure")


class _Once(argparse.Action):
    """Store a value; a second occurrence is an error, as in Condure."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest) is not None:
            raise argparse.ArgumentError(self, "cannot be used multiple times")
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def _help_line(opt: Option) -> str:
    text = opt.help
    if opt.default_text():
        text += f" [default: {opt.default_text()}]"
    return text.replace("%", "%%")


CTL_EPILOG = ("condure ctl [--socket PATH | --id ID] [--json] COMMAND: ask a running "
              "condure (status, connections, stacks, log-level, reload); see "
              "condure ctl --help.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="condure",
        usage="condure [OPTIONS]",
        description=DESCRIPTION,
        epilog=CTL_EPILOG,
        add_help=False,
        allow_abbrev=False,
    )
    for opt in OPTIONS:
        flags = [opt.short, opt.flag] if opt.short else [opt.flag]
        if opt.flag == "--help":
            parser.add_argument(*flags, action="help", help=_help_line(opt))
        elif opt.flag == "--version":
            parser.add_argument(*flags, action="version", version=f"condure {__version__}",
                                help=_help_line(opt))
        elif opt.kind in (FLAG, ACTION):
            parser.add_argument(*flags, dest=opt.dest, action=_Once, nargs=0, default=None,
                                help=_help_line(opt))
        elif opt.repeatable:
            parser.add_argument(*flags, dest=opt.dest, action="append", default=None,
                                metavar=opt.metavar, help=_help_line(opt))
        else:
            parser.add_argument(*flags, dest=opt.dest, action=_Once, default=None,
                                metavar=opt.metavar, help=_help_line(opt))
    return parser


def _convert(opt: Option, text: str) -> int | str:
    try:
        if opt.kind == UINT:
            return parse_uint(text)
        if opt.kind == OCTAL:
            return parse_uint(text, bits=32, radix=8)
    except ValueError as e:
        raise ConfigError(f"failed to parse {opt.name}: {e}") from None
    return text


def _parse_listeners(values: Sequence[str]) -> tuple[ListenSpec, ...]:
    return tuple(parse_listen(value)[0] for value in values)


def parse_syntax(argv: Sequence[str]) -> argparse.Namespace:
    """Step 1: argv as argparse reads it (an action option such as
    ``--sizes`` is True when given). Raises SystemExit (syntax, help,
    version)."""
    return build_parser().parse_args(list(argv))


def parse(argv: Sequence[str]) -> tuple[Config, frozenset[str]]:
    """Parse and validate argv. Returns the config and the set of option
    destinations given explicitly. Raises SystemExit (syntax, help,
    version) or ConfigError."""
    return validate(parse_syntax(argv))


def validate(namespace: argparse.Namespace) -> tuple[Config, frozenset[str]]:
    """Step 2: the values of a namespace from :func:`parse_syntax`."""
    given = frozenset(opt.dest for opt in OPTIONS
                      if getattr(namespace, opt.dest, None) is not None)

    values: dict[str, Any] = {}
    for opt in OPTIONS:
        if opt.kind == ACTION:
            continue
        raw = getattr(namespace, opt.dest)
        if opt.kind == FLAG:
            values[opt.dest] = bool(raw)
        elif opt.repeatable:
            default = opt.default if isinstance(opt.default, tuple) else ()  # repeatable: a tuple
            values[opt.dest] = list(raw) if raw is not None else list(default)
        elif raw is None and opt.default is None:
            values[opt.dest] = None  # an optional value left out (--pid-file)
        else:
            values[opt.dest] = _convert(opt, raw if raw is not None else str(opt.default))

    ident = values["id"]
    if ident == "" or " " in ident:
        raise ConfigError("failed to parse id: value cannot be empty or contain a space")
    workers = values["workers"]
    if workers > WORKERS_MAX:
        raise ConfigError("failed to parse workers: value too large")
    if workers == 0:
        raise ConfigError("failed to parse workers: value must be at least 1")
    if values["req_maxconn"] + values["stream_maxconn"] > CONNS_MAX:
        raise ConfigError("total maxconn is too large")

    listen = values["listen"]
    if not listen and not values["zserver_req"] and not values["zserver_stream"]:
        listen = [DEFAULT_LISTEN]
    values["listen"] = _parse_listeners(listen)

    if values["req_maxconn"] < workers:
        raise ConfigError("req maxconn must be >= workers")
    if values["stream_maxconn"] < workers:
        raise ConfigError("stream maxconn must be >= workers")

    fields = set(Config.__dataclass_fields__)
    arguments: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                 for k, v in values.items() if k in fields}
    config = Config(**arguments)
    if config.uses_stream:
        for base in config.zclient_stream:
            stream_endpoints(base)
    for base in config.zserver_stream:
        stream_endpoints(base)  # the same rules for the client role's bases
    return config, given


def parse_args(argv: Sequence[str]) -> Config:
    """Parse and validate argv into a Config (see :func:`parse`)."""
    return parse(argv)[0]


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["ctl"]:  # the control client, a small parser of its own
        from condure import ctl
        return ctl.main(argv[1:])
    # A stop signal from now on is recorded, not fatal: the supervisor
    # acts on it once its loop runs (condure/supervisor/early.py).
    from condure.supervisor import early
    early.install()
    try:
        namespace = parse_syntax(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    if namespace.sizes:
        from condure import sizes  # imported late, as the supervisor

        print("\n".join(sizes.lines()))
        return 0
    try:
        config, _ = validate(namespace)
    except ConfigError as e:
        # An error line shows at every level, so the default level will do.
        log.setup(log.DEFAULT_LEVEL)
        _logger.error("%s", e)
        return 1

    log.setup(config.log_level)

    # Imported late: parsing must not need it.
    from condure.supervisor import main as supervisor

    return supervisor.run(config)

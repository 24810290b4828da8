"""Command line parsing, the options table and the log format."""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from condure import __version__, log, sizes
from condure.cli import build_parser, main, parse, parse_args, parse_syntax
from condure.config import (
    ACCEPT_MODES,
    Config,
    ConfigError,
    ListenSpec,
    parse_listen,
    parse_uint,
    stream_endpoints,
)
from condure.options import LISTEN_PARAMS, OPTIONS
from condure.optionsdoc import render_markdown

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(
    r"^\[(ERR|WARN|INFO|DEBUG|TRACE)\] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \[([^\]]+)\] (.*)$"
)
SIZE_LINE = re.compile(r"^([a-z_]+): ([1-9]\d*) bytes$")


def error_of(argv: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_args(argv)
    return str(info.value)


def exit_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


# ---------------------------------------------------------------- the table


def test_docs_options_md_is_up_to_date() -> None:
    assert (ROOT / "docs" / "options.md").read_text(encoding="utf-8") == render_markdown(), (
        "docs/options.md is stale: "
        "run python -m condure.optionsdoc --markdown --output docs/options.md"
    )


def test_table_has_every_condure_option_once() -> None:
    flags = [opt.flag for opt in OPTIONS]
    assert len(flags) == len(set(flags))
    expected = {
        "--log-level", "--id", "--workers", "--req-maxconn", "--stream-maxconn",
        "--buffer-size", "--body-buffer-size", "--messages-max", "--req-timeout",
        "--stream-timeout", "--listen", "--zclient-req", "--zclient-stream",
        "--zclient-connect", "--zserver-req", "--zserver-stream", "--zserver-connect",
        "--ipc-file-mode", "--tls-identities-dir", "--compression", "--deny-out-internal",
        "--sizes", "--help", "--version",
    }
    assert expected <= set(flags)


def test_table_value_options_map_to_config_fields() -> None:
    fields = set(Config.__dataclass_fields__)
    for opt in OPTIONS:
        if opt.kind not in ("action",):
            assert opt.dest in fields, opt.flag


def test_defaults_match_config_defaults() -> None:
    assert parse_args([]) == Config()


def test_markdown_mentions_every_option_and_param() -> None:
    text = render_markdown()
    for opt in OPTIONS:
        assert f"`{opt.flag}`" in text
    for param in LISTEN_PARAMS:
        assert f"`{param.key}" in text


def test_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = exit_of(["--help"], capsys)
    assert code == 0
    for opt in OPTIONS:
        assert opt.flag in out
    assert "[default: 0.0.0.0:8000,stream]" in out
    assert "--compression" in out
    assert "--sizes Print the memory one connection takes and exit" in " ".join(out.split())


def test_help_names_every_accept_mode(capsys: pytest.CaptureFixture[str]) -> None:
    out = " ".join(exit_of(["--help"], capsys)[1].split())
    entry = out.split("--accept-mode MODE ", 1)[1].split(" --drain-timeout", 1)[0]
    summary, _, default = entry.partition(" [default: ")
    assert all(re.search(rf"\b{mode}\b", summary) for mode in ACCEPT_MODES), summary
    assert "(auto: reuseport, or shared under socket activation)" in summary
    assert default == "auto]"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = exit_of(["-V"], capsys)
    assert (code, out) == (0, f"condure {__version__}\n")
    code, out, _ = exit_of(["--version"], capsys)
    assert (code, out) == (0, f"condure {__version__}\n")


# ---------------------------------------------------------------- each option


@pytest.mark.parametrize("style", ["space", "equals"])
@pytest.mark.parametrize(
    "flag, text, field, value",
    [
        ("--log-level", "0", "log_level", 0),
        ("--log-level", "4", "log_level", 4),
        ("--log-level", "+3", "log_level", 3),
        ("--id", "cid9", "id", "cid9"),
        ("--workers", "1", "workers", 1),
        ("--workers", "100", "workers", 100),  # at most req-maxconn (100)
        ("--stream-maxconn", "5000", "stream_maxconn", 5000),
        ("--buffer-size", "16384", "buffer_size", 16384),
        ("--stream-timeout", "60", "stream_timeout", 60),
        ("--ipc-file-mode", "600", "ipc_file_mode", 0o600),
        ("--ipc-file-mode", "0777", "ipc_file_mode", 0o777),
        ("--zclient-stream", "ipc:///tmp/x", "zclient_stream", ("ipc:///tmp/x",)),
        ("--zclient-stream", "tcp://127.0.0.1:5000", "zclient_stream",
         ("tcp://127.0.0.1:5000",)),
    ],
)
def test_value_options(flag: str, text: str, field: str, value: object, style: str) -> None:
    argv = [flag, text] if style == "space" else [f"{flag}={text}"]
    assert getattr(parse_args(argv), field) == value


def test_zclient_connect_flag() -> None:
    assert parse_args([]).zclient_connect is False
    assert parse_args(["--zclient-connect"]).zclient_connect is True


def test_repeatable_option_replaces_default() -> None:
    config = parse_args(["--zclient-stream", "ipc://a", "--zclient-stream=ipc://b"])
    assert config.zclient_stream == ("ipc://a", "ipc://b")


def test_workers_given_is_recorded() -> None:
    assert "workers" not in parse([])[1]
    assert "workers" in parse(["--workers", "2"])[1]


def test_large_log_level_is_trace() -> None:
    assert parse_args(["--log-level", "18446744073709551615"]).log_level == 2**64 - 1


# ---------------------------------------------------------------- value errors


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--log-level", "x"], "failed to parse log-level: invalid digit found in string"),
        (["--log-level", ""], "failed to parse log-level: cannot parse integer from empty string"),
        (["--log-level", " 1"], "failed to parse log-level: invalid digit found in string"),
        (["--log-level=-1"], "failed to parse log-level: invalid digit found in string"),
        (["--log-level", "1_0"], "failed to parse log-level: invalid digit found in string"),
        (["--log-level", "99999999999999999999"],
         "failed to parse log-level: number too large to fit in target type"),
        (["--workers", "x"], "failed to parse workers: invalid digit found in string"),
        (["--workers", "99999999999999999999"],
         "failed to parse workers: number too large to fit in target type"),
        (["--stream-maxconn", "x"],
         "failed to parse stream-maxconn: invalid digit found in string"),
        (["--buffer-size", "x"], "failed to parse buffer-size: invalid digit found in string"),
        (["--stream-timeout", "1.5"],
         "failed to parse stream-timeout: invalid digit found in string"),
        (["--ipc-file-mode", "8"], "failed to parse ipc-file-mode: invalid digit found in string"),
        (["--ipc-file-mode", ""],
         "failed to parse ipc-file-mode: cannot parse integer from empty string"),
        (["--ipc-file-mode", "77777777777"],
         "failed to parse ipc-file-mode: number too large to fit in target type"),
        (["--id", ""], "failed to parse id: value cannot be empty or contain a space"),
        (["--id", "a b"], "failed to parse id: value cannot be empty or contain a space"),
        (["--workers", "1025"], "failed to parse workers: value too large"),
        (["--workers", "0"], "failed to parse workers: value must be at least 1"),
        (["--workers", "101"], "req maxconn must be >= workers"),
        (["--stream-maxconn", "1"], "stream maxconn must be >= workers"),
        (["--stream-maxconn", "9999901"], "total maxconn is too large"),
        (["--zclient-stream", "foo"], "base spec must be ipc or tcp"),
        (["--zclient-stream", "IPC://foo"], "base spec must be ipc or tcp"),
        (["--zclient-stream", "tcp://1.2.3.4"],
         "error parsing tcp port in base spec: invalid digit found in string"),
        (["--zclient-stream", "tcp://1.2.3.4:x"],
         "error parsing tcp port in base spec: invalid digit found in string"),
        (["--zclient-stream", "tcp://:70000"],
         "error parsing tcp port in base spec: number too large to fit in target type"),
        (["--zclient-stream", "ipc://ok", "--zclient-stream", "bad"],
         "base spec must be ipc or tcp"),
    ],
)
def test_value_errors(argv: list[str], message: str) -> None:
    assert error_of(argv) == message


@pytest.mark.parametrize(
    "argv, message",
    [
        # Condure parses numbers in table order before it checks the id.
        (["--id", "", "--log-level", "x"], "failed to parse log-level"),
        (["--listen", "x", "--workers", "x"], "failed to parse workers"),
        (["--workers", "1025", "--id", ""], "failed to parse id"),
        (["--listen", "x", "--id", ""], "failed to parse id"),
        (["--stream-maxconn", "9999901", "--listen", "x"], "total maxconn"),
        (["--stream-maxconn", "1", "--listen", "x"], "failed to parse listen"),
        (["--zclient-stream", "foo", "--listen", "x"], "failed to parse listen"),
        (["--stream-maxconn", "1", "--workers", "101"], "req maxconn"),
        (["--stream-maxconn", "1", "--zclient-stream", "foo"], "stream maxconn"),
    ],
)
def test_first_error_wins_in_condure_order(argv: list[str], message: str) -> None:
    assert error_of(argv).startswith(message)


# ---------------------------------------------------------------- --listen


@pytest.mark.parametrize(
    "value, host, port",
    [
        ("127.0.0.1:8000", "127.0.0.1", 8000),
        ("8000", "0.0.0.0", 8000),
        ("0", "0.0.0.0", 0),
        ("127.0.0.1:0", "127.0.0.1", 0),
        ("[::1]:8000", "::1", 8000),
        ("[::]:0", "::", 0),
        ("[fe80::1%2]:80", "fe80::1%2", 80),
        ("[::ffff:1.2.3.4]:80", "::ffff:1.2.3.4", 80),
        ("1.2.3.4:00080", "1.2.3.4", 80),
        ("255.255.255.255:65535", "255.255.255.255", 65535),
    ],
)
def test_listen_addresses(value: str, host: str, port: int) -> None:
    (spec,) = parse_args(["--listen", value]).listen
    assert (spec.host, spec.port, spec.path, spec.mode) == (host, port, None, "stream")


def test_listen_address_display() -> None:
    specs = parse_args(["--listen", "[::1]:80", "--listen", "80"]).listen
    assert [s.address for s in specs] == ["[::1]:80", "0.0.0.0:80"]


def test_default_listener() -> None:
    assert parse_args([]).listen == (ListenSpec("0.0.0.0", 8000, mode="stream"),)


def test_listen_repeated_replaces_default() -> None:
    config = parse_args(["--listen", "1", "--listen=2,stream"])
    assert [s.port for s in config.listen] == [1, 2]


def test_listen_later_stream_overrides_req() -> None:
    # a later mode overrides an earlier one, and both are reported as given
    spec, keys = parse_listen("80,req,stream")
    assert spec.mode == "stream" and keys == ("req", "stream")
    spec, _ = parse_listen("80,stream,req")
    assert spec.mode == "req"


def test_listen_all_params_parse() -> None:
    spec, _ = parse_listen("127.0.0.1:443,tls,default-cert=example.com")
    assert spec.tls and spec.default_cert == "example.com" and not spec.is_local
    spec, _ = parse_listen("/run/c.sock,local,mode=660,user=www,group=www,req")
    assert spec.is_local and spec.path == "/run/c.sock"
    assert (spec.file_mode, spec.user, spec.group, spec.mode) == (0o660, "www", "www", "req")
    assert spec.host is None and spec.port is None and not spec.tls


@pytest.mark.parametrize(
    "value, message",
    [
        ("foo", "failed to parse listen: invalid port foo"),
        ("", "failed to parse listen: invalid port "),
        ("1.2.3.4:x", "failed to parse listen: invalid port x"),
        ("1.2.3.4:99999", "failed to parse listen: invalid port 99999"),
        ("99999", "failed to parse listen: invalid port 99999"),
        ("[::1]", "failed to parse listen: invalid port 1]"),
        ("abc:80", "failed to parse listen: invalid socket address syntax"),
        ("localhost:80", "failed to parse listen: invalid socket address syntax"),
        ("+80", "failed to parse listen: invalid socket address syntax"),
        (":80", "failed to parse listen: invalid socket address syntax"),
        ("1.2.3.4:+80", "failed to parse listen: invalid socket address syntax"),
        ("01.2.3.4:0", "failed to parse listen: invalid socket address syntax"),
        ("256.1.1.1:0", "failed to parse listen: invalid socket address syntax"),
        ("::1:0", "failed to parse listen: invalid socket address syntax"),
        ("[fe80::1%lo]:0", "failed to parse listen: invalid socket address syntax"),
        ("127.0.0.1:0,bogus", "failed to parse listen: invalid param: bogus"),
        ("127.0.0.1:0,", "failed to parse listen: invalid param: "),
        ("127.0.0.1:0,=x", "failed to parse listen: invalid param: =x"),
        ("80,req,bogus", "failed to parse listen: invalid param: bogus"),
        ("x,bogus", "failed to parse listen: invalid param: bogus"),
        ("/x,local,mode=8", "failed to parse mode: invalid digit found in string"),
        ("/x,local,mode=", "failed to parse mode: cannot parse integer from empty string"),
    ],
    # the value only: the message would read as a test result
    ids=lambda v: "" if v.startswith("failed to parse") else repr(v),
)
def test_listen_errors(value: str, message: str) -> None:
    assert error_of(["--listen", value]) == message


@pytest.mark.parametrize(
    "value, field, expected",
    [
        ("80,req", "mode", "req"),
        ("80,req,stream", "mode", "stream"),
        ("80,stream,req", "mode", "req"),
        ("80,tls", "tls", True),
        ("80,tls,default-cert=x", "default_cert", "x"),
        ("/tmp/s,local", "path", "/tmp/s"),
        ("/tmp/s,local,mode=600", "file_mode", 0o600),
        ("/tmp/s,local,user=a", "user", "a"),
        ("/tmp/s,local,group=b", "group", "b"),
    ],
)
def test_listen_params(value: str, field: str, expected: object) -> None:
    (spec,) = parse_args(["--listen", value]).listen
    assert getattr(spec, field) == expected


# ---------------------------------------------------------------- --sizes


def test_sizes_is_seen_by_the_syntax_step_only() -> None:
    assert parse_syntax(["--sizes"]).sizes is True
    assert parse_syntax([]).sizes is None
    # The values after it are still read by the syntax step, not checked.
    namespace = parse_syntax(["--workers", "x", "--sizes", "--listen", "foo"])
    assert (namespace.sizes, namespace.workers, namespace.listen) == (True, "x", ["foo"])
    # Validation ignores it: with valid values it is a config like any other.
    config, given = parse(["--sizes", "--workers", "3"])
    assert config.workers == 3 and given == {"sizes", "workers"}


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--sizes", "--sizes"], "cannot be used multiple times"),
        (["--sizes=yes"], "ignored explicit argument"),
        (["--sizes", "--bogus"], "unrecognized arguments: --bogus"),
        (["--sizes", "--workers"], "expected one argument"),
    ],
)
def test_sizes_with_a_syntax_error_exits_2(argv: list[str], fragment: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = exit_of(argv, capsys)
    assert code == 2 and out == ""
    assert fragment in err


def test_client_role_alone_opens_no_listener() -> None:
    config = parse_args(["--zserver-stream", "ipc://x", "--zserver-req", "ipc://r",
                         "--zserver-connect", "--deny-out-internal"])
    assert config.listen == () and not config.uses_stream and not config.uses_req
    assert config.zserver_stream == ("ipc://x",) and config.zserver_req == ("ipc://r",)
    assert config.zserver_connect and config.deny_out_internal
    both = parse_args(["--zserver-stream", "ipc://x", "--listen", "127.0.0.1:1"])
    assert both.uses_stream and both.zserver_stream == ("ipc://x",)


def test_client_role_base_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"^base spec must be ipc or tcp$"):
        parse_args(["--zserver-stream", "inproc://x"])


# ---------------------------------------------------------------- syntax errors


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--list", "80"], "unrecognized arguments"),  # no abbreviations
        (["--log-level"], "expected one argument"),
        (["--id", "a", "--id", "b"], "cannot be used multiple times"),
        (["--zclient-connect", "--zclient-connect"], "cannot be used multiple times"),
        (["--zclient-connect=yes"], "ignored explicit argument"),
        (["--listen", "1", "2"], "unrecognized arguments: 2"),
        (["extra"], "unrecognized arguments: extra"),
    ],
)
def test_syntax_errors_exit_2(argv: list[str], fragment: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = exit_of(argv, capsys)
    assert code == 2 and out == ""
    assert err.startswith("usage: condure [OPTIONS]") and fragment in err


def test_parser_is_built_from_the_table() -> None:
    parser = build_parser()
    known = {s for a in parser._actions for s in a.option_strings}
    assert known == {s for o in OPTIONS for s in (o.flag, o.short) if s}


# ---------------------------------------------------------------- main


@pytest.fixture
def no_run(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """These command lines must stop before anything runs: a guard that
    fails the test if main() got as far as starting the supervisor."""
    from condure.supervisor import main as supervisor

    def run(config: Config) -> int:
        raise AssertionError(f"main() ran the supervisor for {config!r}")

    monkeypatch.setattr(supervisor, "run", run)
    yield
    log.setup(log.DEFAULT_LEVEL, io.StringIO())  # detach from the captured stdout


def test_main_semantic_error(no_run: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--id", ""]) == 1
    (line,) = capsys.readouterr().out.splitlines()
    m = LINE.match(line)
    assert m and m.groups() == (
        "ERR", "condure", "failed to parse id: value cannot be empty or contain a space")


@pytest.mark.parametrize("argv", [
    ["--sizes"],
    # as Condure: values are not checked once --sizes is given
    ["--workers", "x", "--sizes", "--listen", "foo", "--stream-maxconn", "1"],
])
def test_main_sizes(argv: list[str], no_run: None, earlier_garbage: None,
                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert err == ""
    matches = [SIZE_LINE.match(line) for line in out.splitlines()]
    assert all(matches), out
    assert tuple(m.group(1) for m in matches if m) == sizes.NAMES


def test_main_syntax_error_returns_2(no_run: None) -> None:
    assert main(["--bogus"]) == 2
    assert main(["--help"]) == 0


# ---------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    "text, bits, radix, result",
    [
        ("0", 64, 10, 0), ("+7", 64, 10, 7), ("007", 16, 10, 7), ("65535", 16, 10, 65535),
        ("65536", 16, 10, ValueError("number too large to fit in target type")),
        ("+", 64, 10, ValueError("invalid digit found in string")),
        ("-", 64, 10, ValueError("invalid digit found in string")),
        ("-0", 64, 10, ValueError("invalid digit found in string")),
        ("٣", 64, 10, ValueError("invalid digit found in string")),
        ("17", 32, 8, 15), ("9", 32, 8, ValueError("invalid digit found in string")),
    ],
)
def test_parse_uint(text: str, bits: int, radix: int, result: object) -> None:
    if isinstance(result, ValueError):
        with pytest.raises(ValueError, match=f"^{result}$"):
            parse_uint(text, bits, radix)
    else:
        assert parse_uint(text, bits, radix) == result


def test_stream_endpoints() -> None:
    assert stream_endpoints("ipc://x") == ("ipc://x-out", "ipc://x-out-stream", "ipc://x-in")
    assert stream_endpoints("tcp://127.0.0.1:5000") == (
        "tcp://127.0.0.1:5000", "tcp://127.0.0.1:5001", "tcp://127.0.0.1:5002")
    assert stream_endpoints("tcp://[::1]:5000")[2] == "tcp://[::1]:5002"


# ---------------------------------------------------------------- logging


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    out = io.StringIO()
    yield out
    log.setup(log.DEFAULT_LEVEL, io.StringIO())  # detach from this test's buffer


@pytest.mark.parametrize("number, shown", [
    (0, ["ERR"]),
    (1, ["ERR", "WARN"]),
    (2, ["ERR", "WARN", "INFO"]),
    (3, ["ERR", "WARN", "INFO", "DEBUG"]),
    (4, ["ERR", "WARN", "INFO", "DEBUG", "TRACE"]),
    (99, ["ERR", "WARN", "INFO", "DEBUG", "TRACE"]),
])
def test_log_levels(number: int, shown: list[str], log_output: io.StringIO) -> None:
    log.setup(number, log_output)
    logger = log.get_logger("condure.worker")
    logger.error("e")
    logger.warning("w")
    logger.info("i")
    logger.debug("d")
    log.trace(logger, "t %d", 1)
    matches = [LINE.match(x) for x in log_output.getvalue().splitlines()]
    assert [m.group(1) if m else None for m in matches] == shown
    assert all(m and m.group(2) == "condure.worker" for m in matches)
    assert log.trace_enabled() == (number >= 4)


def test_log_line_format_and_local_time(log_output: io.StringIO) -> None:
    log.setup(2, log_output)
    record = logging.LogRecord("condure", logging.INFO, __file__, 1, "started %s", ("ok",), None)
    record.created = 1_700_000_000.1239
    record.msecs = 123.0
    line = log.CondureFormatter().format(record)
    expected = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_700_000_000))
    assert line == f"[INFO] {expected}.123 [condure] started ok"


def test_get_logger_names(log_output: io.StringIO) -> None:
    assert log.get_logger("worker").name == "condure.worker"
    assert log.get_logger("condure").name == "condure"
    log.setup(2, log_output)
    log.setup(2, log_output)  # setup twice: still one handler, one line
    log.get_logger("net").info("x")
    assert len(log_output.getvalue().splitlines()) == 1

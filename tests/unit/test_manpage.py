"""man/condure.1 is generated from the options table and lints clean."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from condure import manpage
from condure.options import LISTEN_PARAMS, OPTIONS, PATH, Option
from tests.harness.procs import REPO_ROOT

PAGE = REPO_ROOT / "man" / "condure.1"
REGENERATE = "regenerate it: python -m condure.manpage > man/condure.1"


def _plain(roff: str) -> str:
    """The page's text without font escapes, with minus signs as dashes."""
    return re.sub(r"\\f[BIRP]", "", roff).replace("\\-", "-").replace("\\&", "")


def test_committed_page_is_the_generated_one():
    assert PAGE.read_text(encoding="utf-8") == manpage.render(), REGENERATE


def _tagged_heads(roff: str, section: str) -> list[str]:
    """The tag lines (after ``.TP``) of one ``.SH`` section, as plain text."""
    body = roff.split(f"\n.SH {section}\n", 1)[1].split("\n.SH ", 1)[0].split("\n")
    return [_plain(body[i + 1]) for i, line in enumerate(body) if line == ".TP"]


def _documented_flags(roff: str) -> set[str]:
    flags = set()
    for head in _tagged_heads(roff, "OPTIONS"):
        flags.update(word.rstrip(",") for word in head.split() if word.startswith("-"))
    return flags


def test_every_option_and_listen_parameter_is_documented():
    roff = manpage.render()
    flags = _documented_flags(roff)
    text = _plain(roff)
    for opt in OPTIONS:
        assert opt.flag in flags, f"{opt.flag} missing from the man page"
        if opt.short:
            assert opt.short in flags
        assert _plain(manpage._text(opt.doc)).split("\n")[0] in text
    keys = {head.split("=")[0] for head in _tagged_heads(roff, "LISTEN SYNTAX")}
    assert keys == {p.key for p in LISTEN_PARAMS}


def test_required_sections():
    sections = re.findall(r"^\.SH (.+)$", manpage.render(), re.M)
    assert sections == ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "LISTEN SYNTAX",
                        "SIGNALS", "CONTROL SOCKET", "ENVIRONMENT", "FILES", "EXIT STATUS",
                        "EXAMPLES", "SEE ALSO"]
    text = manpage.render()
    for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "LISTEN_FDS", "LISTEN_PID",
                 "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM"):
        assert f"\\fB{name}\\fR" in text, name


def _flat(roff: str) -> str:
    return " ".join(_plain(roff).split())


def test_defaults_read_sensibly():
    flat = _flat(manpage.render())
    # No value runs into the full stop ("Default: .." for a default of ".").
    assert not re.search(r"Default: \S*[.,;:]\.", flat), re.findall(r"Default: \S*", flat)
    assert "--tls-identities-dir DIR" in flat
    tls = flat.split("--tls-identities-dir DIR", 1)[1].split(" .TP", 1)[0]
    assert tls.endswith("Default: the working directory."), tls
    # A conditional default is told by the option's own text, once.
    listen = flat.split("--listen [ADDR:]PORT[,PARAMS...]", 1)[1].split(" .TP", 1)[0]
    assert listen.count("0.0.0.0:8000,stream") == 1, listen
    assert "Default: 2." in flat  # --log-level, a plain value


@pytest.mark.parametrize("default, note", [
    (".", "Default: the working directory."),
    ("..", "Default: the parent of the working directory."),
    ("certs", "Default: `certs` in the working directory."),
    ("/etc/condure/certs", "Default: `/etc/condure/certs`."),
])
def test_path_defaults(default, note):
    opt = Option("--some-dir", PATH, "A directory", "A directory.", metavar="DIR",
                 default=default)
    assert manpage.default_note(opt) == note


def test_a_missing_option_is_caught(monkeypatch):
    # The checks above must be able to fail: render without one row.
    monkeypatch.setattr(manpage, "OPTIONS", OPTIONS[:2] + OPTIONS[3:])
    roff = manpage.render()
    assert OPTIONS[2].flag not in _documented_flags(roff)
    assert OPTIONS[1].flag in _documented_flags(roff)
    assert roff != PAGE.read_text(encoding="utf-8")


@pytest.mark.skipif(shutil.which("mandoc") is None, reason="mandoc is not installed")
def test_mandoc_lint_is_clean():
    r = subprocess.run(["mandoc", "-T", "lint", "-W", "all", str(PAGE)],
                       capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout + r.stderr) == (0, "")

"""man/condure.1 is generated from the options table and lints clean."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from condure import manpage
from condure.options import LISTEN_PARAMS, OPTIONS
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
                        "SIGNALS", "ENVIRONMENT", "FILES", "EXIT STATUS", "EXAMPLES",
                        "SEE ALSO"]
    text = manpage.render()
    for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "LISTEN_FDS", "LISTEN_PID",
                 "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM"):
        assert f"\\fB{name}\\fR" in text, name


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

"""systemd/condure.socket and systemd/condure.service pass systemd-analyze."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from condure import manpage
from tests.harness.doccmds import code_blocks, commands
from tests.harness.procs import REPO_ROOT
from tests.harness.systemd_ns import adapt_unit, exec_reload_python, exec_start_python

UNITS = REPO_ROOT / "systemd"
SYSTEMD_MD = REPO_ROOT / "docs" / "systemd.md"

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed")


def _verify(tmp_path, service: str) -> subprocess.CompletedProcess:
    (tmp_path / "condure.service").write_text(service)
    shutil.copy(UNITS / "condure.socket", tmp_path / "condure.socket")
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no",
         str(tmp_path / "condure.socket"), str(tmp_path / "condure.service")],
        capture_output=True, text=True, timeout=60)


@needs_analyze
def test_units_verify_clean(tmp_path):
    # ExecStart and ExecReload must name an existing binary: this
    # checkout's interpreter.
    text = (UNITS / "condure.service").read_text()
    service = adapt_unit(text, {
        ("Service", "ExecStart"): [exec_start_python(["--listen", "fd-name=http"])],
        ("Service", "ExecReload"): [exec_reload_python(text)],
    })
    r = _verify(tmp_path, service)
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


@needs_analyze
def test_verify_can_fail(tmp_path):
    service = (UNITS / "condure.service").read_text().replace("Type=notify", "Type=notifyy")
    r = _verify(tmp_path, service)
    assert "service type" in r.stderr and "notifyy" in r.stderr


def test_service_contract():
    text = (UNITS / "condure.service").read_text()
    settings = dict(line.split("=", 1) for line in text.splitlines()
                    if "=" in line and not line.startswith(("#", " ")))
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "main"
    assert settings["KillMode"] == "mixed"
    # A reload that systemctl can wait for, bounded below systemd's own
    # bound for it (TimeoutStartSec=), falling back to SIGHUP.
    reload = _exec_line(text, "ExecReload")
    assert reload[:4] == [manpage.PROGRAM, "ctl", "reload", "--wait"], reload
    assert reload[reload.index("--fallback-pid") + 1] == "$MAINPID", reload
    assert 0 < float(reload[reload.index("--timeout") + 1]) < int(settings["TimeoutStartSec"])
    assert settings["Restart"] == "on-failure"
    assert int(settings["LimitNOFILE"]) == 20000
    assert int(settings["FileDescriptorStoreMax"]) > 0
    # A graceful stop (--drain-timeout, default 30 s) must not be cut short.
    assert int(settings["TimeoutStopSec"]) > 30
    socket_text = (UNITS / "condure.socket").read_text()
    name = next(line.split("=", 1)[1] for line in socket_text.splitlines()
                if line.startswith("FileDescriptorName="))
    assert f"fd-name={name}" in text


def _exec_line(text: str, key: str) -> list[str]:
    """The words of a unit's ``key=`` line (continuation lines joined)."""
    joined = text.replace("\\\n", " ")
    line = next(ln for ln in joined.splitlines() if ln.startswith(key + "="))
    return line[len(key) + 1:].split()


def _exec_start(text: str) -> list[str]:
    return _exec_line(text, "ExecStart")


def test_install_path_agrees_everywhere():
    """The unit runs the program where docs/systemd.md installs it, which is
    what the man page's FILES and EXAMPLES name."""
    program = _exec_start((UNITS / "condure.service").read_text())[0]
    assert program == manpage.PROGRAM == f"{manpage.PREFIX}/bin/condure"
    install = commands(code_blocks(SYSTEMD_MD, "Install", lang="sh")[0])
    assert f"python3 -m venv {manpage.PREFIX}" in install, install
    assert f"{manpage.PREFIX}/bin/pip install ." in install, install
    assert any(line.startswith("install ") and line.endswith(" /etc/systemd/system/")
               and "systemd/condure.service" in line for line in install), install
    page = manpage.render()
    files = page.split("\n.SH FILES\n", 1)[1].split("\n.SH ", 1)[0].replace("\\-", "-")
    for path in (program, "/etc/systemd/system/condure.service",
                 "/etc/systemd/system/condure.socket"):
        assert f"\\fB{path}\\fR" in files, path
    examples = page.split("\n.SH EXAMPLES\n", 1)[1]
    assert f"ExecStart={program} " in examples
    # Nowhere an install path the documented steps do not make.
    for text in (page, SYSTEMD_MD.read_text(), (UNITS / "condure.service").read_text()):
        assert "/usr/local/bin/condure" not in text
        assert "/opt/condure/.venv" not in text

"""The commands README.md, examples/README.md, docs/pushpin.md and
docs/operations.md (`condure ctl`, CURVE keys) show, run as written
(tests/harness/doccmds.py): from a directory laid out like the checkout,
with Debian's PATH and no PYTHONPATH, only the port changed (and, where a
line names the service's install, /opt/condure, the checkout's .venv in
its place). docs/systemd.md's TLS listener example is checked for the
certificate directory and default certificate it needs.

docs/systemd.md's install steps are run by tests/integration/test_systemd.py
(they need a systemd), and so is the examples/README.md line for the
systemd unit's endpoints.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from condure.manpage import PROGRAM
from tests.harness import pushpin
from tests.harness.doccmds import (
    DEBIAN_PATH,
    DocShell,
    answered,
    code_blocks,
    commands,
    group_alive,
)
from tests.harness.procs import REPO_ROOT, free_port

REPO = REPO_ROOT
EXAMPLES = REPO / "examples"
VENV = REPO / ".venv"
PUSHPIN_MD = REPO / "docs" / "pushpin.md"

pytestmark = pytest.mark.skipif(not (VENV / "bin" / "condure").exists(),
                                reason="no .venv in the checkout (scripts/setup makes it)")


@pytest.fixture
def doc_shell(tmp_path):
    shell = DocShell(REPO, tmp_path, free_port())
    yield shell
    shell.close()


def not_setup(line: str) -> bool:
    """``./scripts/setup`` made the .venv these commands run with; running
    it again here could reinstall into the .venv other tests are using."""
    if line == "./scripts/setup":
        assert (REPO / "scripts" / "setup").stat().st_mode & 0o111
        return True
    return False


def test_readme_use_commands_work_as_written(doc_shell):
    lines = [c for b in code_blocks(REPO / "README.md", "Use", lang="sh") for c in commands(b)]
    assert lines[0] == "./scripts/setup", lines
    outputs = doc_shell.play(lines, skip=not_setup)
    assert len(outputs) == 1 and answered(outputs[0], "hello world\n"), outputs


def test_examples_readme_commands_work_as_written(doc_shell):
    """condure, the printreq | sendresp pipeline and curl; then req mode."""
    lines = [c for b in code_blocks(EXAMPLES / "README.md", lang="sh") for c in commands(b)]
    # The line for the systemd unit's endpoints is run by test_systemd.py.
    unit_lines = [c for c in lines if "/run/condure/" in c]
    assert len(unit_lines) == 1, lines
    outputs = doc_shell.play(lines, skip=lambda line: line in unit_lines)
    assert len(outputs) == 2, outputs
    assert answered(outputs[0], "responding from another process\n"), outputs
    assert answered(outputs[1], "hello world\n"), outputs


TRY_IT = re.compile(r"^\| `(\w+\.py)[^|]*\|[^|]*\| `(curl -i http://localhost:8000/\S*)` \|$")


@pytest.mark.parametrize("program, body", [
    ("basichandler.py", "hello world\n"),
    ("streamhandler.py", "hello world\n"),
    ("handoffhandler.py", "ok /hello\n"),
])
def test_examples_readme_table_works_as_written(doc_shell, program, body):
    """A row of the table: condure as the page starts it, the program as
    the page says to start one, then the row's "try it"."""
    text = (EXAMPLES / "README.md").read_text()
    rows = dict(m.groups() for m in map(TRY_IT.match, text.splitlines()) if m)
    template = re.search(r"Start a program with `(\.venv/bin/python examples/NAME\.py)`",
                         " ".join(text.split()))
    assert program in rows and template, (rows, template)
    first = commands(code_blocks(EXAMPLES / "README.md", lang="sh")[0])
    assert first[0].startswith(".venv/bin/condure "), first
    outputs = doc_shell.play([first[0], template.group(1).replace("NAME.py", program),
                              rows[program]])
    assert answered(outputs[0], body), outputs


def documented_wrapper() -> str:
    """docs/pushpin.md's wrapper script, with this checkout's path filled in."""
    wrappers = [b for b in code_blocks(PUSHPIN_MD, "Using condure", lang="sh")
                if b[0] == "#!/bin/sh"]
    assert len(wrappers) == 1, wrappers
    script = "\n".join(wrappers[0]).replace("/path/to/condure-checkout", str(REPO)) + "\n"
    assert str(REPO) in script
    return script


def test_pushpin_condure_bin_and_wrapper_work_as_written(doc_shell, tmp_path):
    """docs/pushpin.md: condure_bin names the program where docs/systemd.md
    installs it, and the wrapper, with the checkout's path filled in, runs
    condure from Debian's PATH as Pushpin's runner would (``--name=value``
    arguments) and serves a request."""
    ini = code_blocks(PUSHPIN_MD, "Using condure", lang="ini")
    assert ini == [["[runner]", "condure_bin=" + PROGRAM]], ini
    wrapper = tmp_path / "condure-wrapper"
    wrapper.write_text(documented_wrapper())
    wrapper.chmod(0o755)
    base = f"ipc://{tmp_path}/client"
    doc_shell.start(f"{wrapper} --log-level=2 --listen=127.0.0.1:{doc_shell.port},stream "
                    f"--zclient-stream={base}", condure=True)
    doc_shell.start(f".venv/bin/python examples/basichandler.py --base {base}")
    output = doc_shell.run(f"curl -i http://127.0.0.1:{doc_shell.port}/")
    assert answered(output, "hello world\n"), output


def child_cmdlines(pid: int) -> list[str]:
    """The command lines of a process's children."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out = []
    for kid in kids:
        try:
            raw = Path(f"/proc/{kid}/cmdline").read_bytes()
        except OSError:
            continue
        out.append(raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace"))
    return out


@pytest.mark.skipif(pushpin.missing() is not None, reason=str(pushpin.missing()))
def test_pushpin_runs_condure_through_the_documented_wrapper(tmp_path_factory, monkeypatch):
    """Debian's Pushpin with docs/pushpin.md's wrapper as ``condure_bin``
    (the test harness's private instance otherwise), started from Debian's
    PATH without PYTHONPATH: a request goes through condure from the
    checkout's virtualenv, which got the wrapper's own option."""
    script = documented_wrapper()

    def write_documented_wrapper(path, impl, argv_log):
        path.write_text(script)
        path.chmod(0o755)

    monkeypatch.setattr(pushpin, "write_condure_wrapper", write_documented_wrapper)
    monkeypatch.setenv("PATH", DEBIAN_PATH)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    inst = pushpin.start_pushpin("ours", tmp_path_factory.mktemp("pp"))
    try:
        resp = pushpin.fetch(inst.port, "GET", "/echo/doc")
        assert (resp.code, resp.body) == (200, b"GET /echo/doc\n")
        children = child_cmdlines(inst.runner.pid)
        assert any(cmd.startswith(f"{VENV}/bin/python {VENV}/bin/condure --workers 4 "
                                  "--log-level=") for cmd in children), children
    finally:
        inst.stop()


OPERATIONS_MD = REPO / "docs" / "operations.md"
SYSTEMD_MD = REPO / "docs" / "systemd.md"
# Programs that have `ctl`: the service's (docs/systemd.md) and a checkout's,
# as typed in the root shell docs/systemd.md installs from (no sudo: Debian
# 12 installed with a root password has none). `condure` alone is Debian's
# /usr/bin/condure, the Rust original.
CTL_PROGRAMS = (f"{PROGRAM} ctl ", ".venv/bin/condure ctl ")


def test_operations_ctl_commands_work_as_written(doc_shell, tmp_path):
    """docs/operations.md's `condure ctl` block and the man page's EXAMPLES
    name a program that has `ctl`; against the README's condure, the
    checkout's line runs as written, and the service's lines run with the
    checkout's program in place of the installed one."""
    from condure import manpage

    (block,) = code_blocks(OPERATIONS_MD, "Control socket and `condure ctl`", lang="sh")
    lines = commands(block)
    assert lines and all(line.startswith(CTL_PROGRAMS) for line in lines), lines
    examples = manpage.render().split("\n.SH EXAMPLES\n", 1)[1].replace("\\-", "-")
    ctl_examples = [line for line in examples.splitlines() if " ctl " in line]
    assert ctl_examples and all(line.startswith(CTL_PROGRAMS[0]) for line in ctl_examples), \
        ctl_examples
    # a login shell's runtime directory, where condure's control socket goes
    doc_shell.env["XDG_RUNTIME_DIR"] = str(tmp_path)
    readme = [c for b in code_blocks(REPO / "README.md", "Use", lang="sh") for c in commands(b)]
    doc_shell.start(next(c for c in readme if c.startswith(".venv/bin/condure ")))
    for line in lines:
        out = doc_shell.run(line.replace(CTL_PROGRAMS[0], CTL_PROGRAMS[1]))
        assert out.strip(), line
        if "status" in line and "--json" not in line:
            assert re.match(r"condure condure \(pid \d+\): (running|reloading), ", out), \
                (line, out)


def test_operations_curve_keys_made_as_written(tmp_path):
    """docs/operations.md's CURVE key block, with condure's own Python (this
    checkout's in place of the service's, a scratch directory in place of
    /etc/condure/curve): the key files it promises are there."""
    (block,) = code_blocks(OPERATIONS_MD, "Authenticated handlers (CURVE)", lang="sh")
    lines = commands(block)
    assert not any(line.startswith("python3 ") for line in lines), lines  # no pyzmq there
    assert any(line.startswith(f"{PROGRAM.rsplit('/', 1)[0]}/python -c ") for line in lines)
    script = "\n".join(lines).replace("/etc/condure/curve", str(tmp_path / "curve")).replace(
        f"{PROGRAM.rsplit('/', 1)[0]}/python", str(VENV / "bin" / "python"))
    r = subprocess.run(["sh", "-e", "-c", script], capture_output=True, text=True, timeout=60,
                       env={"PATH": DEBIAN_PATH, "HOME": str(tmp_path)})
    assert r.returncode == 0, (script, r.stderr)
    made = {p.relative_to(tmp_path / "curve").as_posix()
            for p in (tmp_path / "curve").rglob("*") if p.is_file()}
    assert made == {"condure.key", "condure.key_secret", "handler1.key", "handler1.key_secret",
                    "clients/handler1.key"}, made


def test_systemd_tls_example_names_its_certificates():
    """docs/systemd.md's TLS listener under socket activation (working
    directory /): the ExecStart= gives --tls-identities-dir and the
    listener a default-cert=NAME, and the install lines put NAME.crt and
    NAME.key in that directory."""
    text = SYSTEMD_MD.read_text()
    (exec_start,) = [line for line in text.splitlines()
                     if line.startswith(f"# ExecStart={PROGRAM} ") and ",tls" in line]
    words = exec_start.split()
    directory = words[words.index("--tls-identities-dir") + 1]
    assert directory.startswith("/"), exec_start
    (listener,) = [w for w in words if w.startswith("fd-name=https,tls")]
    name = dict(p.split("=", 1) for p in listener.split(",") if "=" in p)["default-cert"]
    installs = [c for b in code_blocks(SYSTEMD_MD, lang="sh") for c in commands(b)]
    for suffix in (".crt", ".key"):
        assert any(line.startswith("install ") and f"{name}{suffix} {directory}/" in line
                   for line in installs), (name, suffix, installs)


def test_examples_readme_sendresp_cell_works_as_written(doc_shell):
    """The table's "try it" for sendresp.py: with condure as the page starts
    it (two workers), printreq running and a curl waiting, the cell's
    command with the two words printreq printed answers that curl; the
    cell's example words have the form printreq prints."""
    text = (EXAMPLES / "README.md").read_text()
    (row,) = [line for line in text.splitlines() if line.startswith("| `sendresp.py ")]
    cell = row.rstrip(" |").rsplit(" | ", 1)[1]
    command = re.search(r"`(\.venv/bin/python examples/sendresp\.py [^`]*ADDRESS ID)`", cell)
    example = re.search(r"for example `([^`]+)`", cell)
    assert command and example, cell
    printed = re.compile(r"^(condure(?:\.\d+)?) (\d+-\d+-[0-9a-f]+)$")
    assert printed.match(example.group(1)), example.group(1)
    first = commands(code_blocks(EXAMPLES / "README.md", lang="sh")[0])
    doc_shell.play([first[0], ".venv/bin/python examples/printreq.py"])
    curl = subprocess.Popen(["curl", "-s", "-i", f"http://localhost:{doc_shell.port}/"],
                            stdout=subprocess.PIPE, env=doc_shell.env)
    try:
        deadline = time.monotonic() + 10
        while not (words := [m.groups() for m in map(printed.match,
                                                        doc_shell.log(2).splitlines()) if m]):
            assert time.monotonic() < deadline and curl.poll() is None, doc_shell.log(2)
            time.sleep(0.1)
        ((address, rid),) = words
        doc_shell.run(command.group(1).replace("ADDRESS ID", f"{address} {rid}"))
        out, _ = curl.communicate(timeout=10)
    finally:
        if curl.poll() is None:
            curl.kill()
            curl.wait()
    assert answered(out.decode(), "responding from another process\n"), out


def setup_is_done() -> str | None:
    """Why scripts/setup would install something now (it would then run
    pip in the scratch checkout below, into this checkout's .venv), or None."""
    pyproject = (REPO / "pyproject.toml").stat().st_mtime
    for stamp in (".installed", ".installed[test]"):
        path = VENV / stamp
        if path.exists() and path.stat().st_mtime >= pyproject:
            return None
    return "the .venv is older than pyproject.toml: scripts/setup would install"


def test_readme_demo_answers_as_written_and_ctrl_c_stops_it(tmp_path):
    """README.md's "Try it": ``./scripts/demo`` with ``PORT`` set as the
    page says, from a directory laid out like the checkout; the README's
    curl, typed as soon as the demo says ``try:``, answers ``hello
    world``; Ctrl-C (SIGINT to the terminal's process group) stops
    everything it started and removes its scratch directory."""
    if (why := setup_is_done()) is not None:
        pytest.skip(why)
    (block,) = code_blocks(REPO / "README.md", "Try it", lang="sh")
    assert commands(block)[0] == "./scripts/demo", block
    prose = " ".join((REPO / "README.md").read_text().split())
    curl = re.search(r"then `(curl -i http://127\.0\.0\.1:8000/)` answers `hello world`", prose)
    assert curl and "Set `PORT` to use another port" in prose, prose
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in (".venv", "examples", "scripts", "pyproject.toml"):
        (checkout / name).symlink_to(REPO / name)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    port = free_port()
    env = {"PATH": DEBIAN_PATH, "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "PORT": str(port), "TMPDIR": str(scratch), "XDG_RUNTIME_DIR": str(tmp_path)}
    demo = subprocess.Popen(["sh", "-c", "./scripts/demo"], cwd=checkout, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    said = []
    try:
        while not any(line.startswith("try: ") for line in said):
            line = demo.stderr.readline()  # the demo prints "try:" or exits
            assert line, ("scripts/demo ended", demo.wait(timeout=10), said)
            said.append(line)
        assert f"try: curl -i http://127.0.0.1:{port}/" in said[-1], said
        r = subprocess.run(curl.group(1).replace("8000", str(port)).split(),
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 0 and answered(r.stdout, "hello world\n"), (r, said)
        os.killpg(demo.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        demo.wait(timeout=20)
        deadline = time.monotonic() + 10
        while group_alive(demo.pid):
            assert time.monotonic() < deadline, "processes of the demo left after Ctrl-C"
            time.sleep(0.05)
        assert list(scratch.iterdir()) == [], list(scratch.iterdir())
    finally:
        if group_alive(demo.pid):
            os.killpg(demo.pid, signal.SIGKILL)
        if demo.poll() is None:
            demo.kill()
        demo.wait()
        demo.stderr.close()


SIZES = re.compile(r"`(\.venv/bin/condure --sizes)`")


def test_operations_sizes_line_names_a_program_that_prints_them(doc_shell):
    """docs/operations.md's ``--sizes``: the line names this project's
    program (Debian's ``condure --sizes`` prints the Rust original's
    figures), and the checkout's form prints the four figures the page
    names, in that order."""
    prose = " ".join(OPERATIONS_MD.read_text().split())
    assert f"`{PROGRAM} --sizes`" in prose, "operations.md: --sizes of which program?"
    line = SIZES.search(prose)
    assert line, "operations.md: no checkout form of --sizes"
    names = ["req_connection", "stream_connection", "websocket_connection",
             "deflate_codec_state"]
    assert all(f"`{name}`" in prose for name in names), names
    out = doc_shell.run(line.group(1))
    printed = [row.split(":")[0] for row in out.splitlines()]
    assert printed == names, out
    assert all(re.fullmatch(r"\w+: \d+ bytes", row) for row in out.splitlines()), out

"""The commands README.md, examples/README.md and docs/pushpin.md show, run
as written (tests/harness/doccmds.py): from a directory laid out like the
checkout, with Debian's PATH and no PYTHONPATH, only the port changed.

docs/systemd.md's install steps are run by tests/integration/test_systemd.py
(they need a systemd), and so is the examples/README.md line for the
systemd unit's endpoints.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from condure.manpage import PROGRAM
from tests.harness import pushpin
from tests.harness.doccmds import DEBIAN_PATH, DocShell, answered, code_blocks, commands
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

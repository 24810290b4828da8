"""Journal priority prefixes when standard output is systemd's journal stream."""

from __future__ import annotations

import io
import logging
import os

from condure import log


def _setup_with_journal_stream(tmp_path, monkeypatch, matching: bool):
    path = tmp_path / "out"
    stream = open(path, "w+")  # noqa: SIM115 - closed by the test
    st = os.fstat(stream.fileno())
    inode = st.st_ino if matching else st.st_ino + 1
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{inode}")
    log.setup(3, stream)
    return stream


def test_journal_stream_lines_carry_priorities(tmp_path, monkeypatch):
    stream = _setup_with_journal_stream(tmp_path, monkeypatch, matching=True)
    try:
        logger = log.get_logger("condure.test")
        logger.error("bad")
        logger.warning("careful")
        logger.info("note")
        logger.debug("detail")
        stream.flush()
        lines = (tmp_path / "out").read_text().splitlines()
        assert [line[:3] for line in lines] == ["<3>", "<4>", "<6>", "<7>"]
        assert lines[0].startswith("<3>[ERR] ") and lines[0].endswith("[condure.test] bad")
    finally:
        log.setup(2, io.StringIO())
        stream.close()


def test_other_streams_keep_condure_format(tmp_path, monkeypatch):
    stream = _setup_with_journal_stream(tmp_path, monkeypatch, matching=False)
    try:
        log.get_logger("condure.test").info("note")
        stream.flush()
        assert (tmp_path / "out").read_text().startswith("[INFO] ")
    finally:
        log.setup(2, io.StringIO())
        stream.close()


def test_multiline_records_prefix_every_line(tmp_path, monkeypatch):
    stream = _setup_with_journal_stream(tmp_path, monkeypatch, matching=True)
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            log.get_logger("condure.test").exception("failed")
        stream.flush()
        lines = (tmp_path / "out").read_text().splitlines()
        assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)
    finally:
        log.setup(2, io.StringIO())
        stream.close()
        logging.getLogger("condure").handlers.clear()

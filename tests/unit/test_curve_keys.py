"""condure/net/curve.py and the CURVE options' checks in Config: which
combinations are refused, key files that cannot be used, the allowed-keys
check of the ZAP handler (reload on change, rate-limited refusal lines)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import zmq.auth

from condure.config import Config, ConfigError, ListenSpec
from condure.net import curve


@pytest.fixture
def certs(tmp_path) -> dict[str, tuple[str, str]]:
    (tmp_path / "clients").mkdir()
    made = {name: zmq.auth.create_certificates(str(tmp_path), name)
            for name in ("condure", "alice", "bob")}
    (tmp_path / "clients" / "alice.key").write_bytes(Path(made["alice"][0]).read_bytes())
    return made


def test_without_secret_nothing_is_asked_and_other_curve_options_are_refused(tmp_path):
    assert curve.load(Config()) is None
    with pytest.raises(ConfigError, match="zmq-curve-clients needs zmq-curve-secret"):
        Config(zmq_curve_clients=str(tmp_path))
    with pytest.raises(ConfigError, match="zmq-curve-server needs zmq-curve-secret"):
        Config(zmq_curve_server="x.key")


def test_binding_needs_clients_connecting_needs_a_server_key():
    with pytest.raises(ConfigError, match="zmq-curve-clients must name"):
        Config(zmq_curve_secret="c.key_secret")
    with pytest.raises(ConfigError, match="zmq-curve-server must name"):
        Config(zmq_curve_secret="c.key_secret", zclient_connect=True)
    # The client role counts too: bound by default, connected with --zserver-connect.
    with pytest.raises(ConfigError, match="zmq-curve-clients must name"):
        Config(zmq_curve_secret="c", zmq_curve_server="s", zclient_connect=True,
               zserver_stream=("tcp://127.0.0.1:5000",))
    with pytest.raises(ConfigError, match="zmq-curve-server must name"):
        Config(zmq_curve_secret="c", zmq_curve_clients="d", listen=(),
               zserver_req=("tcp://127.0.0.1:5000",), zserver_connect=True)
    Config(zmq_curve_secret="c", zmq_curve_clients="d")
    Config(zmq_curve_secret="c", zmq_curve_server="s", zclient_connect=True,
           listen=(ListenSpec(mode="req"),))


def test_key_files_that_cannot_be_used(tmp_path, certs):
    public, secret = certs["condure"]
    clients = str(tmp_path / "clients")
    with pytest.raises(ConfigError, match="holds no secret key"):
        curve.load(Config(zmq_curve_secret=public, zmq_curve_clients=clients))
    with pytest.raises(ConfigError, match="zmq-curve-secret: cannot read"):
        curve.load(Config(zmq_curve_secret=str(tmp_path / "nope"), zmq_curve_clients=clients))
    with pytest.raises(ConfigError, match="zmq-curve-clients: cannot read"):
        curve.load(Config(zmq_curve_secret=secret, zmq_curve_clients=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="zmq-curve-server: cannot read"):
        curve.load(Config(zmq_curve_secret=secret, zmq_curve_server=str(tmp_path / "nope"),
                          zclient_connect=True))
    keys = curve.load(Config(zmq_curve_secret=secret, zmq_curve_server=certs["alice"][0],
                             zclient_connect=True))
    assert keys is not None
    assert (keys.public, keys.secret) == zmq.auth.load_certificate(secret)
    assert keys.server == zmq.auth.load_certificate(certs["alice"][0])[0]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _key(path: str) -> bytes:
    return zmq.auth.load_certificate(path)[0]


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def caught():
    """What condure.zmq logs, whatever another test did to the tree."""
    logger = logging.getLogger("condure.zmq")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_allowed_keys_refusals_are_rate_limited(tmp_path, certs, caught):
    clock = Clock()
    allowed = curve.AllowedKeys(str(tmp_path / "clients"), clock=clock)
    alice, bob = _key(certs["alice"][0]), _key(certs["bob"][0])
    assert allowed.callback("*", alice)
    allowed.peer = "10.0.0.9"
    assert not allowed.callback("*", bob)
    for _ in range(5):  # a handler retrying: counted, not logged
        clock.now += 1
        assert not allowed.callback("*", bob)
    lines = [r for r in caught.records if "refused" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert "at 10.0.0.9" in lines[0].getMessage() and bob.decode() in lines[0].getMessage()
    clock.now += curve.REFUSAL_INTERVAL
    assert not allowed.callback("*", bob)
    lines = [r.getMessage() for r in caught.records if "refused" in r.getMessage()]
    assert len(lines) == 2 and "(5 more refusals not logged)" in lines[1]
    assert allowed.callback("*", alice)


def test_allowed_keys_follow_the_directory(tmp_path, certs):
    clients = tmp_path / "clients"
    allowed = curve.AllowedKeys(str(clients), clock=Clock())
    bob = _key(certs["bob"][0])
    assert not allowed.callback("*", bob)
    (clients / "bob.key").write_bytes(Path(certs["bob"][0]).read_bytes())
    stamp = os.stat(clients).st_mtime_ns + 1_000_000_000  # a change however coarse the clock
    os.utime(clients, ns=(stamp, stamp))
    assert allowed.callback("*", bob)
    (clients / "bob.key").unlink()
    os.utime(clients, ns=(stamp + 1_000_000_000,) * 2)
    assert not allowed.callback("*", bob)

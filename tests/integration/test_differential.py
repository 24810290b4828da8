"""Differential tests: our condure against Debian's condure 1.9.1.

Each scenario drives raw HTTP clients and the scripted handler against a real
condure process and asserts the documented behaviour. It runs once against
the reference binary and once against ours; for ours the packets condure
sent to the handlers (normalised: ids, peer port, per-worker ``from``) must
equal the reference's byte for byte, and so must the bytes each HTTP client
received and whether its connection ended, except for the scenarios listed
in ``HTTP_DIFFERENCES``.

Select one side with ``-k "reference and not ours"`` or ``-k ours``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from tests.conftest import reference_available
from tests.harness import procs
from tests.harness import scenarios as diff_scenarios
from tests.harness.normalize import Normalizer, assert_same_result, without_keep_alives

pytestmark = [
    pytest.mark.reference,
    pytest.mark.skipif(not reference_available(), reason=f"{procs.REFERENCE_BIN} missing"),
]

INSTANCE_ID = "condure"

# scenario name -> why the HTTP client may see different bytes (packets are
# still compared)
HTTP_DIFFERENCES: dict[str, str] = {}

_reference_results: dict[str, dict] = {}


def normalised_result(ctx: diff_scenarios.Ctx, status: int) -> dict:
    norm = Normalizer(INSTANCE_ID)
    packets = {
        h.name.split("-", 1)[1]: [(sock, norm.packet(raw))
                                  for sock, raw in without_keep_alives(h.received)]
        for h in ctx.handlers
    }
    http = [(c.received, "open" if c.end is None else "closed") for c in ctx.conns]
    return {"packets": packets, "http": http, "status": status}


def run_scenario(impl: str, name: str, workdir: Path) -> dict:
    """Run one scenario against one implementation; every process is stopped."""
    scenario = diff_scenarios.SCENARIOS[name]
    # "ours-4": four worker processes behind the supervisor's ZeroMQ relay
    # (bind mode); packets carry "condure.<n>", which the normaliser accepts.
    # "ours-4-connect": four workers connecting straight to the handler,
    # which binds (--zclient-connect).
    workers = 4 if impl.startswith("ours-4") else 1
    extra = ["--zclient-connect"] if impl.endswith("-connect") else []
    with contextlib.ExitStack() as stack:
        try:
            condure = procs.start_condure("reference" if impl == "reference" else "ours",
                                          workdir, instance_id=INSTANCE_ID, workers=workers,
                                          extra_args=extra)
        except procs.StartupError as e:
            failure = f"{impl} condure did not start:\n{e}"
        else:
            failure = None
        if failure:
            pytest.fail(failure, pytrace=False)
        stack.callback(condure.stop)
        ctx = diff_scenarios.Ctx(impl, condure, workdir, stack)
        try:
            scenario(ctx)
        except Exception as e:
            log = condure.stop()
            raise AssertionError(
                f"{impl}: scenario {name} failed: {e}\n(exit status {log})\n"
                f"--- condure output ---\n{condure.pump.tail(40)}"
            ) from e
        for conn in ctx.conns:
            conn.close()
        status = condure.stop()
        return normalised_result(ctx, status)


def reference_result(name: str, tmp_path: Path) -> dict:
    if name not in _reference_results:
        _reference_results[name] = run_scenario("reference", name, tmp_path / "reference")
    return _reference_results[name]


@pytest.mark.parametrize("name", list(diff_scenarios.SCENARIOS))
@pytest.mark.parametrize("impl", ["reference", "ours", "ours-4", "ours-4-connect"])
def test_scenario(impl: str, name: str, tmp_path: Path) -> None:
    if impl.endswith("-connect") and name in diff_scenarios.TWO_HANDLERS:
        pytest.skip("two handlers cannot both bind the endpoints condure connects to")
    if impl == "reference":
        _reference_results.pop(name, None)
        result = reference_result(name, tmp_path)
        assert result["status"] == 0
        return
    expected = reference_result(name, tmp_path)
    result = run_scenario(impl, name, tmp_path / impl)
    assert_same_result(result, expected, name not in HTTP_DIFFERENCES)

"""Read by Python at start-up when this directory is on PYTHONPATH.

With ``CONDURE_TEST_FAULTS=1`` in the environment it installs the
deliberate session faults of ``tests/harness/session_faults.py``. condure's
workers are fresh interpreters the supervisor starts with its own
environment, so this is how the faults reach them; a test sets both
variables only while it starts condure (``session_faults.fault_env``).
"""

import os

if os.environ.get("CONDURE_TEST_FAULTS") == "1":
    from tests.harness import session_faults

    session_faults.install()

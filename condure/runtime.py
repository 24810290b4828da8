"""Where condure keeps its runtime files.

The rule is the one the ZeroMQ proxy follows for its private directory
(docs/supervisor.md): systemd's ``RuntimeDirectory=`` (``$RUNTIME_DIRECTORY``,
the first entry when it lists several), else ``$XDG_RUNTIME_DIR``, else the
temporary directory. The control socket (docs/operations.md) is
``condure-<id>.ctl`` there unless ``--control-socket`` names another path;
``condure ctl --id ID`` finds it by the same rule, so both must see the same
environment.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping


def runtime_parent(environ: Mapping[str, str] | None = None) -> str:
    """The directory runtime files go in (see above)."""
    env = os.environ if environ is None else environ
    for name in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
        first = env.get(name, "").split(":")[0]
        if first and os.path.isdir(first) and os.access(first, os.W_OK | os.X_OK):
            return first
    return tempfile.gettempdir()


# The shipped unit's RuntimeDirectory= (systemd/condure.service): where
# `condure ctl`, run from a shell without $RUNTIME_DIRECTORY, looks next.
SERVICE_RUNTIME_DIR = "/run/condure"


def control_socket_path(instance_id: str, given: str | None = None,
                        environ: Mapping[str, str] | None = None) -> str | None:
    """The control socket's path: ``given`` (``--control-socket``) when set,
    None when it is empty (no control socket), else the default."""
    if given is not None:
        return given or None
    return os.path.join(runtime_parent(environ), f"condure-{instance_id}.ctl")


def find_control_socket(instance_id: str, environ: Mapping[str, str] | None = None) -> str:
    """For ``condure ctl`` without ``--socket``: the default path when a
    socket is there, else the one the shipped systemd unit's condure uses
    (``/run/condure``), else the default path (the error then names it)."""
    default = control_socket_path(instance_id, None, environ) or ""
    service = os.path.join(SERVICE_RUNTIME_DIR, f"condure-{instance_id}.ctl")
    for path in (default, service):
        if os.path.exists(path):
            return path
    return default

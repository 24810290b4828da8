"""Integration-test harness: real condure and handler processes, raw clients.

- ``procs``: start/stop condure (Debian's reference binary or ours) and the
  scripted handler, with readiness handshakes instead of sleeps;
- ``handler_client``: drive ``tests/handlers/scripted_handler.py``;
- ``http_client``: raw-socket HTTP/1.x client;
- ``tnet``: order-preserving tnetstring codec, independent of ``condure``;
- ``normalize``: make condure-sent packets comparable across runs.
"""

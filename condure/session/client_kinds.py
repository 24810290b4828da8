"""The one place that states every client session kind is a
:class:`condure.session.client_contract.ClientSession`."""

from __future__ import annotations

from condure.session.client_contract import ClientSession
from condure.session.client_http import ClientHttpSession
from condure.session.client_req import ClientReqSession


def _every_kind_is_a_client_session(http: ClientHttpSession,
                                    req: ClientReqSession) -> list[ClientSession]:
    """Never called: mypy checks here that both kinds implement the
    contract."""
    return [http, req]

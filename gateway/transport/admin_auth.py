"""Bearer-token check for /admin. With no token configured every admin call is refused (and the
reason is logged), so an operator never exposes pointer moves by forgetting a setting."""

from __future__ import annotations

import hmac
import logging

from inferloop.gateway.errors import AdminDisabled, Unauthorized

log = logging.getLogger("inferloop.gateway")

DISABLED_REASON = "admin endpoints are disabled: INFERLOOP_ADMIN_TOKEN is not set on this gateway"


class AdminGuard:
    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None
        if self._token is None:
            log.warning("%s; every /admin call will get 403", DISABLED_REASON)

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check(self, authorization: bytes | None) -> None:
        if self._token is None:
            log.warning("refused an admin call: %s", DISABLED_REASON)
            raise AdminDisabled(DISABLED_REASON)
        scheme, _, presented = (authorization or b"").partition(b" ")
        # compare_digest takes time independent of where the bytes differ
        if scheme.lower() != b"bearer" or not hmac.compare_digest(presented.strip(), self._token):
            raise Unauthorized("missing or invalid bearer token for the admin endpoints")

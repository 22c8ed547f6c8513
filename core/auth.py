"""The one bearer-token policy of every TrimCache service (pure: no FastAPI, no I/O).

Every state-changing route of the controller, the edge node and the testbed origin calls
:func:`refusal` with the ``Authorization`` header it received and the token(s) it accepts; reads
stay open. The policy, decided once (docs/api.md, "Authentication"):

- a request carrying ``Authorization: Bearer <token>`` equal (constant-time) to one accepted token
  is allowed;
- a missing, malformed or wrong header is refused;
- a service with **no token configured refuses every write** ("control endpoints are disabled"):
  forgetting to configure a token never opens the control plane.

Each service raises its own ``UnauthorizedError`` (401 ``unauthorized``) with the returned message.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable


def bearer_header(token: str | None) -> dict[str, str]:
    """The request headers that carry ``token`` (none for an empty/absent token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def refusal(
    authorization: str | None, accepted: Iterable[str | None], *, setting: str
) -> str | None:
    """Why a write with this ``Authorization`` header is refused, or None when it is allowed.

    Args:
        authorization: the request's ``Authorization`` header (None when absent).
        accepted: the tokens the service accepts; empty/None entries are ignored.
        setting: the environment variable that configures the token (named in the message).
    """
    tokens = [t.encode() for t in accepted if t]
    if not tokens:
        return f"control endpoints are disabled: {setting} is not set"
    scheme, _, given = (authorization or "").partition(" ")
    try:
        presented = given.strip().encode("latin-1")
    except UnicodeEncodeError:
        return "missing or wrong bearer token"
    if scheme.lower() != "bearer" or not any(hmac.compare_digest(presented, t) for t in tokens):
        return "missing or wrong bearer token"
    return None

"""Resume bookkeeping on the kit, over plain values: which tokens a session honours, and how long
it has been parked (docs/protocol.md §13).

Nothing here touches a connection, a greenlet or a clock: :class:`ResumeTokens` and
:class:`Parking` are small values that :class:`~tunnel.server.kit_session.KitSession` holds and
:class:`~tunnel.server.kit.Kit` consults. The decisions live with their owners:

* per session (KitSession): whether a connection end parks the session, the TTL, the WELCOME;
* across sessions (Kit): which parked session a HELLO.resume names, superseding a connection
  that still looks alive, refusing a resume.

Tokens: a WELCOME carries a fresh token; the tokens issued since the last one the client
acknowledged stay valid (a WELCOME lost in a cut leaves the client holding an older one), at most
:data:`MAX_LIVE_RESUME_TOKENS`. Once the client acknowledged a WELCOME, only that WELCOME's token
is honoured. All candidates are compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field

#: Resume tokens a session honours at most (issued since the last acknowledged one).
MAX_LIVE_RESUME_TOKENS = 16
RESUME_FAILED_REASON = "resume failed: session unknown, expired, closed, or token wrong"


def new_resume_token() -> str:
    """At least 128 bits from a CSPRNG, URL-safe base64 (docs/protocol.md §13): here 192."""
    return secrets.token_urlsafe(24)


def compare_token_anyway(token: str) -> None:
    """Spend a comparison's time on a HELLO.resume that names no session, so timing does not
    tell an unknown id from a wrong token."""
    hmac.compare_digest(token.encode("utf-8", "surrogateescape"), b"x" * 32)


@dataclass
class ResumeTokens:
    """The resume tokens one session honours."""

    live: list[str] = field(default_factory=list)

    def issue(self, acknowledged: str | None) -> str:
        """A fresh token for a WELCOME.

        Args:
            acknowledged: the token of the last WELCOME the client acknowledged, if any: nothing
                older can be in the client's hands, so the older ones are forgotten.
        """
        if acknowledged is not None:
            self.live = [acknowledged]
        token = new_resume_token()
        self.live.append(token)
        del self.live[:-MAX_LIVE_RESUME_TOKENS]
        return token

    def matches(self, token: str, acknowledged: str | None) -> bool:
        """Whether ``token`` resumes the session (constant time over every candidate).

        Args:
            acknowledged: as for :meth:`issue`; when set it is the only valid token.
        """
        candidates = [acknowledged] if acknowledged is not None else self.live
        presented = token.encode("utf-8", "surrogateescape")
        ok = False
        for candidate in candidates:  # every one, so timing tells nothing
            ok |= bool(candidate) and hmac.compare_digest(presented, candidate.encode("utf-8"))
        return ok


@dataclass
class Parking:
    """When a session was parked (on the monotonic clock its owner reads)."""

    parked_at: float | None = None

    @property
    def parked(self) -> bool:
        return self.parked_at is not None

    def park(self, now: float) -> None:
        self.parked_at = now

    def unpark(self) -> None:
        self.parked_at = None

    def parked_for_s(self, now: float) -> float:
        """How long the session has been parked; 0 when it is not."""
        return 0.0 if self.parked_at is None else max(0.0, now - self.parked_at)


__all__ = [
    "MAX_LIVE_RESUME_TOKENS",
    "RESUME_FAILED_REASON",
    "Parking",
    "ResumeTokens",
    "compare_token_anyway",
    "new_resume_token",
]

"""ResumeTokens and Parking: the kit's resume bookkeeping over plain values (no clock, no I/O)."""

from __future__ import annotations

import base64
import re

import pytest

from tunnel.server.resumption import (
    MAX_LIVE_RESUME_TOKENS,
    RESUME_FAILED_REASON,
    Parking,
    ResumeTokens,
    compare_token_anyway,
    new_resume_token,
)

# -- tokens ----------------------------------------------------------------------------------------


def test_a_new_token_carries_at_least_128_random_bits_in_url_safe_base64() -> None:
    tokens = {new_resume_token() for _ in range(200)}
    assert len(tokens) == 200  # no repeats
    for token in tokens:
        assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
        assert len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) * 8 >= 128


def test_every_token_issued_since_the_last_acknowledged_one_matches() -> None:
    tokens = ResumeTokens()
    issued = [tokens.issue(None) for _ in range(3)]  # three WELCOMEs, none acknowledged
    assert len(set(issued)) == 3
    for token in issued:
        assert tokens.matches(token, None)  # a WELCOME lost in a cut leaves the client an older one
    assert not tokens.matches("not-a-token", None)
    assert not tokens.matches(issued[0] + "x", None)
    assert not tokens.matches(issued[0][:-1], None)


def test_an_acknowledged_token_is_the_only_one_honoured() -> None:
    tokens = ResumeTokens()
    first, second, third = (tokens.issue(None) for _ in range(3))
    # The client acknowledged the WELCOME that carried `second`.
    assert tokens.matches(second, acknowledged=second)
    assert not tokens.matches(first, acknowledged=second)
    assert not tokens.matches(third, acknowledged=second)


def test_issuing_after_an_acknowledgement_forgets_everything_older() -> None:
    tokens = ResumeTokens()
    old = [tokens.issue(None) for _ in range(3)]
    fresh = tokens.issue(acknowledged=old[1])
    assert tokens.live == [old[1], fresh]
    assert not tokens.matches(old[0], None)
    assert not tokens.matches(old[2], None)
    assert tokens.matches(old[1], None) and tokens.matches(fresh, None)


def test_at_most_sixteen_tokens_live_and_the_oldest_go_first() -> None:
    assert MAX_LIVE_RESUME_TOKENS == 16
    tokens = ResumeTokens()
    issued = [tokens.issue(None) for _ in range(MAX_LIVE_RESUME_TOKENS + 4)]
    assert tokens.live == issued[-MAX_LIVE_RESUME_TOKENS:]
    for token in issued[:4]:
        assert not tokens.matches(token, None)
    for token in issued[4:]:
        assert tokens.matches(token, None)


@pytest.mark.parametrize("acknowledged", ["", None])
def test_an_empty_token_never_matches(acknowledged: str | None) -> None:
    tokens = ResumeTokens()
    if acknowledged is None:
        tokens.live = [""]  # whatever the list holds, an empty candidate is never valid
    assert not tokens.matches("", acknowledged)


def test_tokens_that_are_not_ascii_are_compared_not_rejected_with_an_exception() -> None:
    tokens = ResumeTokens()
    token = tokens.issue(None)
    assert not tokens.matches("t\u00f6ken\udcff", None)
    assert not tokens.matches("t\u00f6ken", acknowledged=token)
    compare_token_anyway("t\u00f6ken\udcff")  # the dummy comparison takes any text too


def test_the_refusal_reason_does_not_say_which_check_failed() -> None:
    assert RESUME_FAILED_REASON == "resume failed: session unknown, expired, closed, or token wrong"


# -- parking ---------------------------------------------------------------------------------------


def test_parking_measures_time_on_the_owners_clock() -> None:
    parking = Parking()
    assert not parking.parked and parking.parked_for_s(100.0) == 0.0
    parking.park(100.0)
    assert parking.parked and parking.parked_at == 100.0
    assert parking.parked_for_s(100.0) == 0.0
    assert parking.parked_for_s(107.5) == 7.5
    assert parking.parked_for_s(99.0) == 0.0  # never negative
    parking.unpark()
    assert not parking.parked and parking.parked_for_s(200.0) == 0.0


def test_parking_again_restarts_the_outage() -> None:
    parking = Parking()
    parking.park(10.0)
    parking.unpark()
    parking.park(50.0)
    assert parking.parked_for_s(52.0) == 2.0

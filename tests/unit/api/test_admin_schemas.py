"""The admin schemas on their own: the grace_ms rule, and dumps of the view objects."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from marshmallow import ValidationError
from werkzeug.datastructures import MultiDict

from tunnel.api.schemas import (
    GRACE_MS_ERROR,
    BindingListSchema,
    KillQuery,
    KillQuerySchema,
    SessionClosingSchema,
    TunnelsOverviewSchema,
)
from tunnel.server.views import BindingView, BindingsView, ClosingView, TunnelsView

DIGITS = re.compile(r"[0-9]+")


def load(value: str) -> KillQuery:
    query: KillQuery = KillQuerySchema().load(MultiDict([("grace_ms", value)]))
    return query


@given(st.text(max_size=12))
def test_grace_ms_is_ascii_digits_from_0_to_5000_and_nothing_else(value: str) -> None:
    valid = DIGITS.fullmatch(value) is not None and int(value) <= 5000
    if valid:
        assert load(value) == KillQuery(int(value))
    else:
        with pytest.raises(ValidationError) as refused:
            load(value)
        assert refused.value.messages == {"grace_ms": [GRACE_MS_ERROR]}


@given(st.integers(min_value=0, max_value=5000))
def test_every_value_in_range_loads(value: int) -> None:
    assert load(str(value)) == KillQuery(value)
    assert load("000" + str(value)) == KillQuery(value)


def test_grace_ms_defaults_to_50_and_unknown_parameters_are_refused() -> None:
    assert KillQuerySchema().load(MultiDict()) == KillQuery(50)
    with pytest.raises(ValidationError) as refused:
        KillQuerySchema().load(MultiDict([("grace", "1")]))
    assert "grace" in refused.value.messages


def test_dumps_use_the_reference_names() -> None:
    binding = BindingView(bind_id=2, kind="PULL", mode="tcp", port=5432, session_id="sess_abc123def456")
    assert BindingListSchema().dump(BindingsView((binding,))) == {
        "bindings": [{"bindId": 2, "kind": "PULL", "mode": "tcp", "port": 5432, "sessionId": "sess_abc123def456"}],
        "total": 1,
    }
    assert SessionClosingSchema().dump(ClosingView("sess_abc123def456")) == {
        "sessionId": "sess_abc123def456",
        "status": "closing",
    }
    assert TunnelsOverviewSchema().dump(TunnelsView(450, 512, ())) == {
        "fdPermitsAvailable": 450,
        "orphanedSessions": 0,
        "totalBindings": 0,
        "totalStreams": 0,
        "sessions": [],
        "fdBudget": 512,
    }

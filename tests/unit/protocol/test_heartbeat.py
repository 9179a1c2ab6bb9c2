"""Heartbeat bookkeeping with a fake clock."""

from __future__ import annotations

import struct

from tunnel.protocol.heartbeat import Heartbeat


def test_nothing_before_the_clock_starts() -> None:
    heartbeat = Heartbeat(5.0)
    assert not heartbeat.started and heartbeat.deadline() is None
    assert heartbeat.poll(100.0) == (None, None)  # starts the clock
    assert heartbeat.started and heartbeat.deadline() == 105.0


def test_pings_once_per_interval_of_silence_then_dead_once() -> None:
    heartbeat = Heartbeat(5.0)
    heartbeat.received(0.0)
    assert heartbeat.poll(4.999) == (None, None)
    assert heartbeat.poll(5.0) == (struct.pack("!Q", 1), None)
    assert heartbeat.poll(6.0) == (None, None)
    assert heartbeat.deadline() == 10.0
    assert heartbeat.poll(10.0) == (struct.pack("!Q", 2), None)
    assert heartbeat.deadline() == 15.0
    assert heartbeat.poll(15.5) == (None, 15.5)
    assert heartbeat.poll(99.0) == (None, None) and heartbeat.deadline() is None
    heartbeat.received(100.0)  # traffic again: a new silence
    assert heartbeat.deadline() == 105.0


def test_a_long_gap_pings_first_and_reports_death_two_intervals_later() -> None:
    # A late poll (a busy loop) must not declare a peer dead that was never asked.
    heartbeat = Heartbeat(1.0)
    heartbeat.received(0.0)
    payload, silent_s = heartbeat.poll(30.0)
    assert payload is not None and silent_s is None
    assert heartbeat.deadline() == 32.0
    assert heartbeat.poll(31.9) == (None, None)
    assert heartbeat.poll(32.0) == (None, 32.0)
    assert heartbeat.poll(40.0) == (None, None)  # reported once per silence


def test_a_late_poll_answered_in_time_keeps_the_session() -> None:
    heartbeat = Heartbeat(0.2)
    heartbeat.received(0.0)
    payload, _ = heartbeat.poll(1.0)  # the first poll comes after 5 intervals
    assert payload is not None
    assert heartbeat.pong(payload, 1.05) is not None
    heartbeat.received(1.05)
    assert heartbeat.poll(1.1) == (None, None)

def test_pong_matching_and_rtt() -> None:
    heartbeat = Heartbeat(1.0)
    heartbeat.received(0.0)
    first, _ = heartbeat.poll(1.0)
    second, _ = heartbeat.poll(2.0)
    assert first is not None and second is not None
    assert heartbeat.pong(b"unknown!", 2.5) is None
    assert heartbeat.pong(second, 2.25) == 0.25 and heartbeat.rtt_s == 0.25
    assert heartbeat.pong(first, 2.5) is None  # older than the answered one: no longer outstanding
    assert heartbeat.pong(second, 2.5) is None  # answered already


def test_interval_can_change() -> None:
    heartbeat = Heartbeat(15.0)
    heartbeat.received(0.0)
    heartbeat.interval_s = 2.0  # the client learns heartbeatMs from WELCOME
    assert heartbeat.deadline() == 2.0

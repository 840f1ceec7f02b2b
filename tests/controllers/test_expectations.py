"""Events a pass's own actions cause are met once, within their time; any other event still wakes a pass."""

from __future__ import annotations

import pytest

from app.controllers.expectations import EXPECTED_FOR, Expectations


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_expected_event_is_met_once() -> None:
    clock = Clock()
    expected = Expectations(clock)
    expected.expect("u1", "Started", "Resumed")
    assert expected.met("u1", "Started", clock.now)
    assert not expected.met("u1", "Started", clock.now)  # a second start is news
    assert expected.met("u1", "Resumed", clock.now)


def test_other_events_and_other_domains_are_not_met() -> None:
    clock = Clock()
    expected = Expectations(clock)
    expected.expect("u1", "Stopped")
    assert not expected.met("u1", "Started", clock.now)
    assert not expected.met("u2", "Stopped", clock.now)
    assert expected.met("u1", "Stopped", clock.now)  # still waiting after the others went by


def test_an_expectation_not_met_in_time_is_forgotten() -> None:
    clock = Clock()
    expected = Expectations(clock)
    expected.expect("u1", "Undefined")
    assert not expected.met("u1", "Undefined", clock.now + EXPECTED_FOR + 1)
    expected.expect("u1", "Undefined")
    clock.now += EXPECTED_FOR + 1
    for index in range(1500):  # enough domains that expired ones are swept
        expected.expect(f"other-{index}", "Defined")
    assert not expected.met("u1", "Undefined", clock.now - EXPECTED_FOR)


def test_an_action_that_fails_caused_no_event() -> None:
    clock = Clock()
    expected = Expectations(clock)
    with pytest.raises(RuntimeError), expected.acting("u1", "Started", "Resumed"):
        raise RuntimeError("libvirt refused")
    assert not expected.met("u1", "Started", clock.now)
    with expected.acting("u1", "Started"):
        pass
    expected.withdraw("u1", "Started")  # e.g. the action reported a failure instead of raising
    assert not expected.met("u1", "Started", clock.now)

"""Helpers shared by the PiWatch tests (a uniquely named module: a bare `conftest` import could
pick up another directory's conftest). Do not add __init__.py to tests/piwatch: the directory
would then shadow the real `piwatch` package."""

from __future__ import annotations

# Short enough that a full animation takes ~0.1 s, long enough that mock blink threads keep up.
FAST = dict(coalesce_seconds=0.05, min_interval_seconds=0.0, blink_seconds=0.01,
            blink_count=3, alarm_buzz_seconds=5.0, mock_pins=True)


def states(pin) -> list[bool]:
    """The pin's value history, starting with its value when the history was last cleared."""
    return [bool(s.state) for s in pin.states]


def clear_all(board) -> None:
    from piwatch.lights import COLOURS, DIRECTIONS

    for d in DIRECTIONS:
        for c in COLOURS:
            board.led_pin(d, c).clear_states()
    board.buzzer_pin.clear_states()

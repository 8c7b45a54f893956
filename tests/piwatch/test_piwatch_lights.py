"""The board driver: BOARD pin numbers, one colour per direction, state reporting, fallback."""

from __future__ import annotations

import pytest
from gpiozero.pins.mock import MockFactory

from piwatch import lights as lights_mod
from piwatch.lights import COLOURS, DIRECTIONS, open_lights

# The PiTraffic wiring from issue 7, as BCM GPIO numbers (what gpiozero reports) on a 40-pin header.
EXPECTED_GPIO = {
    ("south", "red"): 17, ("south", "yellow"): 27, ("south", "green"): 22,  # BOARD 11 13 15
    ("west", "red"): 23, ("west", "yellow"): 24, ("west", "green"): 25,     # BOARD 16 18 22
    ("north", "red"): 5, ("north", "yellow"): 6, ("north", "green"): 13,    # BOARD 29 31 33
    ("east", "red"): 16, ("east", "yellow"): 20, ("east", "green"): 21,     # BOARD 36 38 40
}


def test_pins_follow_the_pitraffic_board(lights):
    for (d, c), gpio in EXPECTED_GPIO.items():
        assert lights.led_pin(d, c).info.name == f"GPIO{gpio}", (d, c)
    assert lights.buzzer_pin.info.name == "GPIO18"  # BOARD 12
    assert lights.button_pin.info.name == "GPIO4"  # BOARD 7


def test_set_direction_lights_exactly_one_colour(lights):
    lights.set_direction("west", "red")
    lights.set_direction("west", "green")
    assert [lights.led_pin("west", c).state for c in COLOURS] == [0, 0, 1]
    assert lights.state()["directions"]["west"] == {"red": "off", "yellow": "off", "green": "on"}
    # Other directions untouched.
    assert all(lights.led_pin("east", c).state == 0 for c in COLOURS)


def test_state_reports_every_led_buzzer_and_button(lights):
    lights.set("north", "yellow", "blink", period=0.02)
    lights.buzzer("on")
    state = lights.state()
    assert set(state["directions"]) == set(DIRECTIONS)
    assert state["directions"]["north"]["yellow"] == "blink"
    assert state["buzzer"] == "on"
    assert state["button_pressed"] is False
    lights.button_pin.drive_low()  # the button pulls the pin to ground
    assert lights.state()["button_pressed"] is True


def test_bounded_beep_reports_off_once_finished(lights):
    lights.buzzer("beep", period=0.02, seconds=0.04)
    assert lights.buzzer_mode() == "beep"
    import time

    time.sleep(0.1)
    assert lights.buzzer_mode() == "off"
    assert lights.buzzer_pin.state == 0


def test_all_off(lights):
    for d in DIRECTIONS:
        lights.set_direction(d, "green")
    lights.buzzer("on")
    lights.all_off()
    assert all(lights.led_pin(d, c).state == 0 for d in DIRECTIONS for c in COLOURS)
    assert lights.buzzer_pin.state == 0


def test_button_callback(lights):
    pressed = []
    lights.on_button(lambda: pressed.append(True))
    lights.button_pin.drive_low()
    lights.button_pin.drive_high()
    assert pressed == [True]


def test_open_lights_mock_flag():
    board = open_lights(mock=True)
    try:
        assert board.backend == "mock"
        assert "PIWATCH_MOCK_PINS" in board.backend_note
    finally:
        board.close()


def test_open_lights_falls_back_to_mock_and_says_why(monkeypatch):
    def broken():
        raise RuntimeError("no /dev/gpiochip0")

    monkeypatch.setattr(lights_mod, "_hardware_factories", lambda: [("lgpio", broken)])
    board = open_lights()
    try:
        assert board.backend == "mock"
        assert "lgpio: RuntimeError: no /dev/gpiochip0" in board.backend_note
    finally:
        board.close()


def test_open_lights_uses_a_working_hardware_factory(monkeypatch):
    # A MockFactory stands in for lgpio here: the point is that a working factory is kept.
    monkeypatch.setattr(lights_mod, "_hardware_factories", lambda: [("lgpio", MockFactory)])
    board = open_lights()
    try:
        assert board.backend == "lgpio"
        assert isinstance(board.pin_factory, MockFactory)
    finally:
        board.close()


def test_on_this_machine_without_gpio_it_runs_on_mock_pins():
    """The test host (like a QEMU guest or a laptop) has no Pi GPIO: auto-detection must say so."""
    import os

    if os.path.exists("/dev/gpiochip0") or os.path.exists("/dev/gpiomem"):
        pytest.skip("this machine has GPIO devices; fallback is covered by the monkeypatched test")
    board = open_lights()
    try:
        assert board.backend == "mock"
        assert board.backend_note.startswith("no GPIO hardware found")
    finally:
        board.close()

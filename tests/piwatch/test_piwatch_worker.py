"""The worker on mock pins: the pin sequence for each kind of event, coalescing, rate limit,
alarms and the button. Pin histories come from gpiozero's MockPin, i.e. what the GPIO saw."""

from __future__ import annotations

import threading
import time

import pytest
from piwatch_testlib import FAST, clear_all, states

from piwatch.events import Event
from piwatch.lights import COLOURS, DIRECTIONS
from piwatch.reactions import load_reactions
from piwatch.settings import Settings
from piwatch.worker import Worker

BLINK3_THEN_ON = [False, True, False, True, False, True, False, True]
BLINK3_THEN_OFF = [False, True, False, True, False, True, False]


def ev(kind="pod", reason="created", namespace="default", name="web-1") -> Event:
    return Event(kind=kind, reason=reason, namespace=namespace, name=name)


def run(worker, *events):
    for e in events:
        worker.submit(e)
    assert worker.wait_idle(5), "worker did not finish"


@pytest.mark.parametrize(
    "reason,colour,expected,final",
    [
        ("created", "green", BLINK3_THEN_ON, "on"),
        ("deleted", "red", BLINK3_THEN_ON, "on"),
        ("updated", "yellow", [False, True], "on"),  # solid: on for the whole pattern, stays on
        ("Surprise", "yellow", BLINK3_THEN_OFF, "off"),  # default: a blink, then dark
    ],
)
def test_pin_sequence_per_event_kind(worker, lights, reason, colour, expected, final):
    clear_all(lights)
    run(worker, ev(reason=reason))
    assert states(lights.led_pin("north", colour)) == expected
    for other in COLOURS:
        if other != colour:
            assert states(lights.led_pin("north", other)) == [False]
    for d in ("south", "west", "east"):
        assert all(states(lights.led_pin(d, c)) == [False] for c in COLOURS)
    assert states(lights.buzzer_pin) == [False]
    assert lights.led_mode("north", colour) == final


def test_failure_blinks_red_buzzes_and_latches_an_alarm(worker, lights):
    clear_all(lights)
    run(worker, ev(reason="BackOff"))
    red = states(lights.led_pin("north", "red"))
    # The pattern, buzzer in step with it, then the alarm keeps blinking in the background.
    assert red[:7] == BLINK3_THEN_OFF
    assert states(lights.buzzer_pin)[:7] == BLINK3_THEN_OFF
    assert lights.led_mode("north", "red") == "blink"
    assert lights.buzzer_mode() == "beep"
    time.sleep(0.1)
    assert len(states(lights.led_pin("north", "red"))) > 8, "alarm LED should keep blinking"
    (alarm,) = worker.state()["alarms"]
    assert alarm["direction"] == "north" and not alarm["acknowledged"]
    assert alarm["event"]["reason"] == "BackOff"


def test_node_not_ready_goes_to_the_node_light(worker, lights):
    run(worker, Event(kind="node", reason="NodeNotReady", name="pi-2"))
    assert lights.led_mode("south", "red") == "blink"
    assert lights.led_mode("north", "red") == "off"


def test_button_silences_buzzer_and_acknowledges(worker, lights):
    run(worker, ev(reason="OOMKilled"))
    assert lights.buzzer_mode() == "beep"
    lights.button_pin.drive_low()  # press
    lights.button_pin.drive_high()
    assert lights.buzzer_mode() == "off"
    assert lights.led_mode("north", "red") == "on"  # steady: seen, but still the last news
    assert worker.state()["alarms"][0]["acknowledged"] is True
    assert worker.stats["acknowledged"] == 1
    lights.buzzer_pin.clear_states()
    time.sleep(0.1)
    assert states(lights.buzzer_pin) == [False], "buzzer must stay silent after the button"


def test_an_open_alarm_is_not_hidden_by_ordinary_events(worker, lights):
    run(worker, ev(reason="Failed"))
    run(worker, ev(reason="created"))
    assert lights.led_mode("north", "red") == "blink"
    assert lights.led_mode("north", "green") == "off"
    worker.acknowledge()
    run(worker, ev(reason="created"))  # after acknowledgement, new news replaces the alarm
    assert lights.led_mode("north", "green") == "on"
    assert lights.led_mode("north", "red") == "off"
    assert worker.state()["alarms"] == []


def test_a_burst_is_coalesced_into_one_animation(lights):
    settings = Settings(**{**FAST, "coalesce_seconds": 0.3})
    worker = Worker(lights, load_reactions(), settings)
    worker.start()
    try:
        clear_all(lights)
        for i in range(50):
            worker.submit(ev(reason="created", name=f"web-{i}"))
        worker.submit(ev(reason="deleted", name="web-7"))
        for i in range(10):
            worker.submit(ev(reason="updated", namespace="kube-system", name=f"cm-{i}"))
        assert worker.wait_idle(5)
        assert worker.stats["animations"] == 1
        assert worker.stats["received"] == 61
        assert worker.stats["coalesced"] == 59  # 61 events, 2 directions
        # The most important event per direction wins: north shows the deletion, not 50 creations.
        assert states(lights.led_pin("north", "red")) == BLINK3_THEN_ON
        assert states(lights.led_pin("north", "green")) == [False]
        assert states(lights.led_pin("west", "yellow")) == [False, True]
        assert len(worker.recent()) == settings.history_size  # history is bounded
    finally:
        worker.stop()


def test_animations_are_rate_limited(lights):
    settings = Settings(**{**FAST, "coalesce_seconds": 0.0, "min_interval_seconds": 0.4})
    worker = Worker(lights, load_reactions(), settings)
    starts: list[float] = []
    real_play = worker.play

    def timed_play(plan):
        starts.append(time.monotonic())
        real_play(plan)

    worker.play = timed_play
    worker.start()
    try:
        worker.submit(ev(reason="created"))
        deadline = time.monotonic() + 2
        while not starts and time.monotonic() < deadline:
            time.sleep(0.005)
        # These arrive while the first animation plays or rests: they must share one animation.
        for name in ("a", "b", "c"):
            worker.submit(ev(reason="updated", name=name))
            time.sleep(0.02)
        assert worker.wait_idle(5)
        assert len(starts) == 2
        assert starts[1] - starts[0] >= 0.4 - 0.01
    finally:
        worker.stop()


def test_self_test_walks_every_led_and_restores_the_display(worker, lights):
    run(worker, ev(reason="created"))
    clear_all(lights)
    worker.request_self_test(buzzer=True)
    assert worker.wait_idle(5)
    for d in DIRECTIONS:
        for c in COLOURS:
            assert True in states(lights.led_pin(d, c)), f"{d} {c} never lit in the self-test"
    assert True in states(lights.buzzer_pin)
    assert lights.led_mode("north", "green") == "on"
    assert lights.led_pin("north", "green").state == 1
    assert sum(lights.led_mode(d, c) != "off" for d in DIRECTIONS for c in COLOURS) == 1


def test_the_worker_survives_a_gpio_error(worker, lights, monkeypatch):
    real = lights.set_direction
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("GPIO write failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(lights, "set_direction", flaky)
    run(worker, ev(reason="created"))
    assert worker.alive
    run(worker, ev(reason="deleted"))
    assert lights.led_mode("north", "red") == "on"


def test_submit_never_blocks_on_the_lights(lights, settings):
    """Even while the board is stuck, a request only records the event."""
    gate = threading.Event()
    worker = Worker(lights, load_reactions(), settings)
    worker.play = lambda plan: gate.wait(5)
    worker.start()
    try:
        worker.submit(ev())
        time.sleep(0.1)  # the worker is now stuck inside play()
        t0 = time.monotonic()
        for i in range(200):
            worker.submit(ev(name=f"p{i}"))
        assert time.monotonic() - t0 < 0.5
        assert worker.pending() == 1
    finally:
        gate.set()
        worker.stop()

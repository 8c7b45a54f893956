"""The PiTraffic board as a small driver: twelve LEDs, a buzzer and a button over gpiozero.

Pins use BOARD (physical header) numbers, which gpiozero accepts as "BOARD11" on every pin
factory, so the same map works on RPi.GPIO (Pi 3/4), lgpio (Pi 5) and the mock pins.
The driver keeps the logical mode of every output ("on", "blink", ...) because a blinking LED's
instantaneous pin value says little to someone reading /lights.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Literal

from gpiozero import LED, Button, Buzzer
from gpiozero.pins.mock import MockFactory

log = logging.getLogger(__name__)

DIRECTIONS = ("south", "west", "north", "east")
COLOURS = ("red", "yellow", "green")

LedMode = Literal["off", "on", "blink"]
BuzzerMode = Literal["off", "on", "beep"]

# SB Components PiTraffic: (red, yellow, green) per direction, as wired on the board.
DEFAULT_LED_PINS: dict[str, tuple[int, int, int]] = {
    "south": (11, 13, 15),
    "west": (16, 18, 22),
    "north": (29, 31, 33),
    "east": (36, 38, 40),
}
DEFAULT_BUZZER_PIN = 12
DEFAULT_BUTTON_PIN = 7


@dataclass(frozen=True)
class PinMap:
    leds: dict[str, tuple[int, int, int]]
    buzzer: int = DEFAULT_BUZZER_PIN
    button: int = DEFAULT_BUTTON_PIN


DEFAULT_PINS = PinMap(leds=DEFAULT_LED_PINS)


class Lights:
    """Thread-safe access to the board; callers are the worker thread and the button callback."""

    def __init__(
        self,
        pin_factory,
        *,
        backend: str = "mock",
        backend_note: str = "",
        pins: PinMap = DEFAULT_PINS,
        button_pull_up: bool = True,
    ) -> None:
        self.backend = backend
        self.backend_note = backend_note
        self.pin_factory = pin_factory
        self._lock = threading.RLock()
        self._leds: dict[tuple[str, str], LED] = {}
        self._modes: dict[tuple[str, str], LedMode] = {}
        for direction in DIRECTIONS:
            for colour, pin in zip(COLOURS, pins.leds[direction]):
                self._leds[direction, colour] = LED(f"BOARD{pin}", pin_factory=pin_factory)
                self._modes[direction, colour] = "off"
        self._buzzer = Buzzer(f"BOARD{pins.buzzer}", pin_factory=pin_factory)
        self._buzzer_mode: BuzzerMode = "off"
        self._buzzer_until: float | None = None
        self._button = Button(
            f"BOARD{pins.button}", pull_up=button_pull_up, bounce_time=0.05,
            pin_factory=pin_factory,
        )

    # -- outputs -------------------------------------------------------------------------

    def set(
        self, direction: str, colour: str, mode: LedMode, *, period: float = 0.5
    ) -> None:
        """Set one LED; "blink" runs in gpiozero's background thread until changed."""
        with self._lock:
            led = self._leds[direction, colour]
            if mode == "on":
                led.on()
            elif mode == "off":
                led.off()
            else:
                led.blink(on_time=period / 2, off_time=period / 2, background=True)
            self._modes[direction, colour] = mode

    def set_direction(
        self, direction: str, colour: str | None, mode: LedMode = "on", *, period: float = 0.5
    ) -> None:
        """Show one colour on a direction (the others off), like a real traffic light."""
        with self._lock:
            for c in COLOURS:
                self.set(direction, c, mode if c == colour else "off", period=period)

    def buzzer(self, mode: BuzzerMode, *, period: float = 0.5, seconds: float | None = None) -> None:
        with self._lock:
            if mode == "on":
                self._buzzer.on()
                self._buzzer_until = None
            elif mode == "off":
                self._buzzer.off()
                self._buzzer_until = None
            else:
                n = None if seconds is None else max(1, int(seconds / period))
                self._buzzer.beep(on_time=period / 2, off_time=period / 2, n=n, background=True)
                self._buzzer_until = None if seconds is None else time.monotonic() + n * period
            self._buzzer_mode = mode

    def all_off(self) -> None:
        with self._lock:
            for direction, colour in self._leds:
                self.set(direction, colour, "off")
            self.buzzer("off")

    # -- inputs --------------------------------------------------------------------------

    def on_button(self, callback: Callable[[], None] | None) -> None:
        self._button.when_pressed = callback

    @property
    def button_pin(self):
        return self._button.pin

    def led_pin(self, direction: str, colour: str):
        return self._leds[direction, colour].pin

    @property
    def buzzer_pin(self):
        return self._buzzer.pin

    # -- reporting -----------------------------------------------------------------------

    def led_mode(self, direction: str, colour: str) -> LedMode:
        with self._lock:
            return self._modes[direction, colour]

    def buzzer_mode(self) -> BuzzerMode:
        with self._lock:
            # A bounded beep stops by itself inside gpiozero; report that instead of "beep".
            if self._buzzer_until is not None and time.monotonic() >= self._buzzer_until:
                self._buzzer_mode = "off"
                self._buzzer_until = None
            return self._buzzer_mode

    def state(self) -> dict:
        with self._lock:
            return {
                "directions": {
                    d: {c: self._modes[d, c] for c in COLOURS} for d in DIRECTIONS
                },
                "buzzer": self.buzzer_mode(),
                "button_pressed": bool(self._button.is_pressed),
            }

    def close(self) -> None:
        with self._lock:
            for led in self._leds.values():
                led.close()
            self._buzzer.close()
            self._button.close()


def _hardware_factories():
    """Real pin factories to try, newest first: lgpio drives the Pi 5 and works on Pi 3/4 too."""

    def lgpio():
        from gpiozero.pins.lgpio import LGPIOFactory

        return LGPIOFactory()

    def rpigpio():
        from gpiozero.pins.rpigpio import RPiGPIOFactory

        return RPiGPIOFactory()

    return [("lgpio", lgpio), ("rpigpio", rpigpio)]


def open_lights(*, mock: bool = False, button_pull_up: bool = True, pins: PinMap = DEFAULT_PINS) -> Lights:
    """Open the board on real GPIO if there is any, else on mock pins (QEMU guests, laptops)."""
    failures: list[str] = []
    if not mock:
        for name, make in _hardware_factories():
            factory = None
            try:
                factory = make()
                lights = Lights(factory, backend=name, pins=pins, button_pull_up=button_pull_up)
            except Exception as exc:  # missing module, no /dev/gpiochip, not a Pi: all mean "try next"
                failures.append(f"{name}: {exc.__class__.__name__}: {exc}")
                if factory is not None:
                    try:
                        factory.close()
                    except Exception:
                        pass
                continue
            log.info("GPIO backend: %s", name)
            return lights
    note = "mock pins requested (PIWATCH_MOCK_PINS)" if mock else (
        "no GPIO hardware found; " + "; ".join(failures)
    )
    log.warning("GPIO backend: mock (%s)", note)
    return Lights(MockFactory(), backend="mock", backend_note=note, pins=pins,
                  button_pull_up=button_pull_up)

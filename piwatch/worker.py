"""The worker thread that turns queued events into light patterns.

Requests never touch GPIO: `submit` only records the event into a pending plan of at most one
entry per direction (the highest priority wins, ties go to the newest). That plan is the
coalescing: a burst of 500 pod updates costs four slots, not 500 animations, and memory stays
bounded without dropping anything. The thread waits `coalesce_seconds` after the first event of
a burst, plays the plan, then rests until `min_interval_seconds` have passed (the rate limit).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from piwatch.events import Event
from piwatch.lights import COLOURS, DIRECTIONS, Lights
from piwatch.reactions import Reaction, Reactions
from piwatch.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Planned:
    reaction: Reaction
    event: Event
    count: int = 1  # how many events this slot stands for


@dataclass
class Alarm:
    direction: str
    colour: str
    event: Event
    acknowledged: bool = False
    since: float = field(default_factory=time.time)

    def as_dict(self) -> dict:
        return {"direction": self.direction, "colour": self.colour,
                "acknowledged": self.acknowledged, "since": self.since,
                "event": self.event.as_dict()}


class Worker:
    def __init__(self, lights: Lights, reactions: Reactions, settings: Settings) -> None:
        self.lights = lights
        self.reactions = reactions
        self.settings = settings
        self.history: deque[Event] = deque(maxlen=settings.history_size)
        self.alarms: dict[str, Alarm] = {}
        self.stats = {"received": 0, "animations": 0, "coalesced": 0, "acknowledged": 0}
        self._cond = threading.Condition()
        self._pending: dict[str, Planned] = {}
        self._self_test: bool | None = None  # None: no test pending; else: with buzzer?
        self._first_pending_at: float | None = None
        self._busy = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beep_until = 0.0
        lights.on_button(self.acknowledge)

    # -- called from request handlers (must stay fast) -----------------------------------

    def submit(self, event: Event) -> Event:
        """Record an event for display; returns it with direction/colour/alarm filled in."""
        reaction = self.reactions.reaction_for(event)
        event.direction = self.reactions.direction_for(event)
        event.colour, event.alarm = reaction.colour, reaction.alarm
        with self._cond:
            self.stats["received"] += 1
            self.history.appendleft(event)
            current = self._pending.get(event.direction)
            if current is None:
                self._pending[event.direction] = Planned(reaction, event)
            else:
                self.stats["coalesced"] += 1
                if reaction.priority >= current.reaction.priority:
                    current.reaction, current.event = reaction, event
                current.count += 1
            self._mark_pending()
        return event

    def request_self_test(self, buzzer: bool = False) -> None:
        with self._cond:
            self._self_test = bool(self._self_test) or buzzer
            self._mark_pending()

    def acknowledge(self) -> int:
        """Silence the buzzer and turn blinking alarms steady; the button calls this too."""
        with self._cond:
            open_alarms = [a for a in self.alarms.values() if not a.acknowledged]
            for alarm in open_alarms:
                alarm.acknowledged = True
                self.lights.set_direction(alarm.direction, alarm.colour, "on")
            self._beep_until = 0.0
            self.lights.buzzer("off")
            if open_alarms:
                self.stats["acknowledged"] += len(open_alarms)
                log.info("alarm acknowledged: %s", ", ".join(a.direction for a in open_alarms))
            return len(open_alarms)

    def _mark_pending(self) -> None:
        if self._first_pending_at is None:
            self._first_pending_at = time.monotonic()
        self._cond.notify_all()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="piwatch-lights", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once nothing is pending or playing (tests and the self-test route use this)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._busy and not self._pending and self._self_test is None, timeout
            )

    def pending(self) -> int:
        with self._cond:
            return len(self._pending) + (self._self_test is not None)

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        s = self.settings
        while not self._stop.is_set():
            with self._cond:
                self._cond.wait_for(
                    lambda: self._stop.is_set() or self._first_pending_at is not None, 1.0
                )
                first = self._first_pending_at
            if first is None or self._stop.is_set():
                continue
            # Let the rest of the burst arrive before deciding what to show.
            self._stop.wait(max(0.0, first + s.coalesce_seconds - time.monotonic()))
            with self._cond:
                plan, self._pending = self._pending, {}
                self_test, self._self_test = self._self_test, None
                self._first_pending_at = None
                self._busy = True
            started = time.monotonic()
            try:
                if self_test is not None:
                    self.play_self_test(buzzer=self_test)
                if plan:
                    self.play(plan)
            except Exception:  # a GPIO hiccup must not kill the thread and silence PiWatch
                log.exception("failed to drive the lights")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
            self._stop.wait(max(0.0, started + s.min_interval_seconds - time.monotonic()))

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def play(self, plan: dict[str, Planned]) -> None:
        """Animate each planned direction at once, then leave its resting state lit."""
        s, lights = self.settings, self.lights
        with self._cond:
            self.stats["animations"] += 1
        for direction in plan:
            lights.set_direction(direction, None)
        buzz = any(p.reaction.buzzer for p in plan.values())
        for _ in range(s.blink_count):
            for direction, p in plan.items():
                lights.set(direction, p.reaction.colour, "on")
            if buzz:
                lights.buzzer("on")
            self._sleep(s.blink_seconds)
            for direction, p in plan.items():
                if p.reaction.pattern == "blink":
                    lights.set(direction, p.reaction.colour, "off")
            if buzz:
                lights.buzzer("off")
            self._sleep(s.blink_seconds)

        new_alarm = False
        blink = s.blink_seconds * 2
        with self._cond:
            for direction, p in plan.items():
                r, alarm = p.reaction, self.alarms.get(direction)
                if r.alarm:
                    self.alarms[direction] = Alarm(direction, r.colour, p.event)
                    new_alarm = True
                    lights.set_direction(direction, r.colour, "blink", period=blink)
                elif alarm is not None and not alarm.acknowledged:
                    # An ordinary event must not hide an alarm nobody has acknowledged yet.
                    lights.set_direction(direction, alarm.colour, "blink", period=blink)
                else:
                    self.alarms.pop(direction, None)
                    lights.set_direction(direction, r.colour, r.then)
            if new_alarm:
                self._beep_until = time.monotonic() + s.alarm_buzz_seconds
            self._resume_beeping()

    def _resume_beeping(self) -> None:
        remaining = self._beep_until - time.monotonic()
        open_alarm = any(not a.acknowledged for a in self.alarms.values())
        if open_alarm and remaining > 0:
            self.lights.buzzer("beep", period=self.settings.blink_seconds * 4, seconds=remaining)

    def play_self_test(self, buzzer: bool = False) -> None:
        """Every colour on every light, then a walk round the compass; restores what was lit."""
        s, lights = self.settings, self.lights
        saved = {(d, c): lights.led_mode(d, c) for d in DIRECTIONS for c in COLOURS}
        for colour in COLOURS:
            for d in DIRECTIONS:
                lights.set_direction(d, colour, "on")
            self._sleep(s.blink_seconds)
        for d in DIRECTIONS:
            lights.set_direction(d, None)
        for d in DIRECTIONS:
            lights.set_direction(d, "green", "on")
            self._sleep(s.blink_seconds)
            lights.set_direction(d, None)
        if buzzer:
            lights.buzzer("on")
            self._sleep(s.blink_seconds)
            lights.buzzer("off")
        for (d, c), mode in saved.items():
            lights.set(d, c, mode, period=s.blink_seconds * 2)
        with self._cond:
            self._resume_beeping()

    def state(self) -> dict:
        with self._cond:
            alarms = [a.as_dict() for a in self.alarms.values()]
            return {
                **self.lights.state(),
                "gpio": self.lights.backend,
                "alarms": alarms,
                "pending": len(self._pending) + (self._self_test is not None),
                "stats": dict(self.stats),
            }

    def recent(self, limit: int | None = None) -> list[dict]:
        with self._cond:
            events = list(self.history)
        return [e.as_dict() for e in events[:limit]]

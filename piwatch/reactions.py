"""Which light shows what: the reactions config (YAML or JSON) and the matching of events to it.

A reaction file has `rules` (event -> colour, pattern, buzzer, alarm) and `directions`
(event -> which of the four lights). In both lists the first matching entry wins; a field that
is left out matches anything. Patterns are shell globs, compared case-insensitively, because
kubewatch's spelling varies ("Backoff" as a kind, "BackOff" as an event reason).
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from piwatch.events import Event
from piwatch.lights import COLOURS, DIRECTIONS

DEFAULT_FILE = Path(__file__).with_name("reactions.yaml")

Direction = Literal["south", "west", "north", "east"]
Colour = Literal["red", "yellow", "green"]


class Match(BaseModel):
    """Globs per event field; an event matches when every given field matches one glob."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: tuple[str, ...] | None = None
    reason: tuple[str, ...] | None = None
    namespace: tuple[str, ...] | None = None
    name: tuple[str, ...] | None = None

    @field_validator("kind", "reason", "namespace", "name", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return (value,) if isinstance(value, str) else value

    def matches(self, event: Event) -> bool:
        for field in ("kind", "reason", "namespace", "name"):
            globs = getattr(self, field)
            if globs is None:
                continue
            value = getattr(event, field).lower()
            if not any(fnmatch.fnmatchcase(value, g.lower()) for g in globs):
                return False
        return True


class Reaction(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    colour: Colour
    pattern: Literal["blink", "solid"] = "blink"
    # What the light shows once the pattern is over; alarms always end blinking until acknowledged.
    then: Literal["on", "off"] = "on"
    buzzer: bool = False
    alarm: bool = False
    # Within one coalesced burst, the highest priority per direction is shown.
    priority: int = 0


class Rule(Match, Reaction):
    pass


class DirectionRule(Match):
    direction: Direction


class Reactions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: tuple[Rule, ...] = ()
    default: Reaction = Reaction(colour="yellow", pattern="blink", priority=0)
    directions: tuple[DirectionRule, ...] = ()
    default_direction: Direction = "north"

    def reaction_for(self, event: Event) -> Reaction:
        for rule in self.rules:
            if rule.matches(event):
                return Reaction(**rule.model_dump(include=set(Reaction.model_fields)))
        return self.default

    def direction_for(self, event: Event) -> str:
        for rule in self.directions:
            if rule.matches(event):
                return rule.direction
        return self.default_direction


class ReactionsError(ValueError):
    pass


def _format_errors(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid reactions config:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']} (got {err.get('input')!r})")
    lines.append(f"  expected directions {list(DIRECTIONS)} and colours {list(COLOURS)};"
                 f" see {DEFAULT_FILE.name} in the piwatch package for an example")
    return "\n".join(lines)


def parse_reactions(data: object, source: Path) -> Reactions:
    try:
        return Reactions.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise ReactionsError(_format_errors(source, exc)) from None


def load_reactions(path: Path | None = None) -> Reactions:
    """Load a reactions file (.json as JSON, anything else as YAML); None -> built-in default."""
    path = path or DEFAULT_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReactionsError(f"{path}: cannot read reactions file: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ReactionsError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
    return parse_reactions(data, path)

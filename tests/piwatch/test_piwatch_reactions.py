"""Reactions config: the defaults from issue 7, custom files, and error messages."""

from __future__ import annotations

import json

import pytest

from piwatch.events import Event
from piwatch.reactions import ReactionsError, load_reactions


@pytest.fixture(scope="module")
def default():
    return load_reactions()


@pytest.mark.parametrize(
    "kind,reason,colour,pattern,alarm",
    [
        ("pod", "created", "green", "blink", False),
        ("deployment", "updated", "yellow", "solid", False),
        ("pod", "deleted", "red", "blink", False),
        ("pod", "BackOff", "red", "blink", True),
        ("pod", "Failed", "red", "blink", True),
        ("pod", "OOMKilled", "red", "blink", True),
        ("node", "NodeNotReady", "red", "blink", True),
        # kubewatch's own special events carry the condition in `kind`.
        ("NodeNotReady", "", "red", "blink", True),
        ("Backoff", "", "red", "blink", True),
        ("pod", "SomethingNew", "yellow", "blink", False),
    ],
)
def test_default_reactions(default, kind, reason, colour, pattern, alarm):
    r = default.reaction_for(Event(kind=kind, reason=reason, namespace="default", name="x"))
    assert (r.colour, r.pattern, r.alarm) == (colour, pattern, alarm)
    assert r.buzzer == alarm  # only failures make noise


def test_matching_is_case_insensitive(default):
    assert default.reaction_for(Event(kind="Pod", reason="CREATED")).colour == "green"


@pytest.mark.parametrize(
    "event,direction",
    [
        (Event(kind="node", reason="updated", name="pi-1"), "south"),
        (Event(kind="NodeNotReady", reason="", name="pi-2"), "south"),
        (Event(kind="pod", reason="created", namespace="kube-system"), "west"),
        (Event(kind="pod", reason="created", namespace="monitoring"), "east"),
        (Event(kind="pod", reason="created", namespace="shop"), "north"),
    ],
)
def test_default_directions(default, event, direction):
    assert default.direction_for(event) == direction


def test_custom_yaml_file(tmp_path):
    f = tmp_path / "reactions.yaml"
    f.write_text(
        """
rules:
  - reason: created
    namespace: "prod-*"
    colour: green
    pattern: solid
    then: "off"
directions:
  - name: pi-worker-*
    direction: east
default_direction: west
"""
    )
    r = load_reactions(f)
    hit = r.reaction_for(Event(kind="pod", reason="created", namespace="prod-eu"))
    assert (hit.colour, hit.pattern, hit.then) == ("green", "solid", "off")
    # Not in prod-*: falls through to the file's default (the built-in default reaction).
    assert r.reaction_for(Event(kind="pod", reason="created", namespace="dev")).colour == "yellow"
    assert r.direction_for(Event(kind="node", reason="x", name="pi-worker-3")) == "east"
    assert r.direction_for(Event(kind="pod", reason="x")) == "west"


def test_custom_json_file(tmp_path):
    f = tmp_path / "reactions.json"
    f.write_text(json.dumps({"rules": [{"kind": "pod", "colour": "red"}],
                             "default_direction": "south"}))
    r = load_reactions(f)
    assert r.reaction_for(Event(kind="pod", reason="created")).colour == "red"
    assert r.direction_for(Event(kind="pod", reason="created")) == "south"


def test_bad_colour_names_the_key_path(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("rules:\n  - reason: created\n    colour: blue\n")
    with pytest.raises(ReactionsError) as exc:
        load_reactions(f)
    msg = str(exc.value)
    assert "rules.0.colour" in msg and "'blue'" in msg and str(f) in msg


def test_unknown_key_is_rejected(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("rules:\n  - reasn: created\n    colour: red\n")
    with pytest.raises(ReactionsError, match=r"rules\.0\.reasn"):
        load_reactions(f)


def test_bad_direction(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("directions:\n  - namespace: x\n    direction: up\n")
    with pytest.raises(ReactionsError, match=r"directions\.0\.direction"):
        load_reactions(f)


def test_unreadable_and_unparsable_files(tmp_path):
    with pytest.raises(ReactionsError, match="cannot read reactions file"):
        load_reactions(tmp_path / "missing.yaml")
    f = tmp_path / "r.json"
    f.write_text("{not json")
    with pytest.raises(ReactionsError, match="not valid JSON"):
        load_reactions(f)


def test_empty_file_means_no_rules(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("")
    r = load_reactions(f)
    assert r.rules == () and r.reaction_for(Event(kind="pod", reason="deleted")).colour == "yellow"

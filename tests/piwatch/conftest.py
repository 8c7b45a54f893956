"""Shared fixtures for the PiWatch tests: a board on gpiozero mock pins and fast timings."""

from __future__ import annotations

import pytest
from gpiozero.pins.mock import MockFactory

from piwatch.lights import Lights
from piwatch.reactions import load_reactions
from piwatch.settings import Settings
from piwatch.worker import Worker
from piwatch_testlib import FAST

@pytest.fixture
def settings() -> Settings:
    return Settings(**FAST)


@pytest.fixture
def lights():
    board = Lights(MockFactory(), backend="mock", backend_note="test board")
    yield board
    board.close()


@pytest.fixture
def worker(lights, settings):
    w = Worker(lights, load_reactions(), settings)
    w.start()
    yield w
    w.stop()

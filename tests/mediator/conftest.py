"""The mediator's tests: its package from the tree, the harness next to this file, and ``med``,
one running mediator process (tests/mediator/harness.py), always stopped."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MEDIATOR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "mediator")
if MEDIATOR not in sys.path:
    sys.path.insert(0, MEDIATOR)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import pytest  # noqa: E402

from harness import Running  # noqa: E402


@pytest.fixture
def med(tmp_path):
    m = Running(tmp_path / "state")
    yield m
    m.stop()

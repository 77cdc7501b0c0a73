import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MEDIATOR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "mediator")
if MEDIATOR not in sys.path:
    sys.path.insert(0, MEDIATOR)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

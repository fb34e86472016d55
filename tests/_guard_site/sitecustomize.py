"""Loaded by every Python child process the tests start: install the loopback-only guard."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
try:
    import netguard
finally:
    sys.path.pop(0)

netguard.install(child=True)

# Fixtures and helpers live in rawgw.py so other suites (tests/nats) can import them.
from rawgw import *  # noqa: F401,F403
from rawgw import clients, gw, start_gateway  # noqa: F401  (fixtures)

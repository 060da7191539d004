# Fixtures: real nats-server processes and gateways on the NATS bus (natsfix.py).
from natsfix import clients, nats, nats_cluster, start_gateway  # noqa: F401

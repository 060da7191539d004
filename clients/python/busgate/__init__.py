"""busgate: the Python client of the busgate gateway (docs/protocol.md).

    import busgate

    async with busgate.connect("busgate://127.0.0.1:7422", token="dev-token") as bg:
        sub = await bg.subscribe("orders.*")
        await bg.publish("orders.created", b"hello")
        msg = await sub.next(timeout=1)

Modules: :mod:`busgate.protocol` (codec, no I/O), :mod:`busgate.errors` (typed errors),
:mod:`busgate.sync` (blocking facade), :mod:`busgate.program` (command runner), ``busgate-cli``.
"""
from . import errors, protocol
from .client import DEFAULT_URL, Client, Msg, Subscription, connect
from .errors import BusgateError

__version__ = "0.1.0"
__all__ = ["connect", "Client", "Msg", "Subscription", "BusgateError", "errors", "protocol", "DEFAULT_URL",
           "__version__"]

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "integration"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "nats"))
from rawgw import clients, gw, start_gateway  # noqa: E402,F401
from natsfix import nats  # noqa: E402,F401

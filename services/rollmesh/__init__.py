"""rollmesh: a gRPC microservice mesh for reinforcement learning of language-model agents."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rollmesh")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+local"

PROTOCOL_VERSION = "v1"

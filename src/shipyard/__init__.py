"""Shipyard: a production deployment kit for web services, and the tasks that run it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("shipyard")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

"""Shipyard: a production deployment kit for web services, and the tasks that run it."""


def __getattr__(name: str) -> str:
    """`__version__`, read from the installed package's metadata on first use: importlib.metadata
    costs about 80 ms, which PostgreSQL's archive_command (shipyard-pgbackrest-push, run once per
    WAL segment) must not pay."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shipyard")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"

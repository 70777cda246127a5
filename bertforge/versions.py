"""Versions of installed distributions: what `bertforge --version` and every benchmark's provenance report."""

from __future__ import annotations


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution (`"numpy"`, `"nvidia-pytriton"`), or None when it is not installed."""
    import importlib.metadata  # ~20 ms of imports: only when a version is asked for

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None

"""The version, in one place: read by the package, by the policies it writes and by the build (pyproject)."""

__version__ = "0.1.0"

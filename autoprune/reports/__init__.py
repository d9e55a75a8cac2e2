"""Reports of finished (or running) runs and comparisons across runs."""

from ._report import compare, write_report
from ._run import RunView, read_run

__all__ = ["RunView", "compare", "read_run", "write_report"]

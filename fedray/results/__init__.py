"""Run outputs: schemas, sinks and the :class:`Result` reader."""

from fedray.results.result import Result

__all__ = ["Result"]

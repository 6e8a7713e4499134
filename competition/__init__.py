"""competition: a toolkit for the Korean dialogue summarization competition."""

__version__ = "0.1.0"

"""competition: a toolkit for the Korean dialogue summarization competition.

The package is layered, lowest first; each sub-package's docstring says what it may import, and
tests/test_layers.py enforces it:

  core (this folder: errors, choices, progress, hashing, files)
  -> text -> data -> models -> candidates -> workspace -> results -> run -> stages -> submit -> cli
"""
from pathlib import Path

__version__ = "0.1.0"
PACKAGE_DIR = Path(__file__).resolve().parent  # beside the modules: sample/ and templates/

"""The ``walrelay`` command line: one module per command group.

``main`` (the click group, ``walrelay run`` and ``walrelay demo``) lives in
:mod:`walrelay.cli.main`; the other groups are loaded only when invoked.
"""

from walrelay.cli.main import main

__all__ = ["main"]

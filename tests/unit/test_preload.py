"""Modules imported ahead on a thread (walrelay.engine.preload)."""

from __future__ import annotations

import sys

import walrelay.web
from walrelay.engine.preload import preload


def test_the_module_is_imported_on_the_thread() -> None:
    name = "walrelay.web.history"
    saved = sys.modules.pop(name, None)
    try:
        preload([name]).join(timeout=60)
        assert name in sys.modules
        assert sys.modules[name] is not saved
    finally:
        # Other tests keep the module object they imported.
        if saved is not None:
            sys.modules[name] = saved
            walrelay.web.history = saved


def test_a_module_that_fails_to_import_is_left_to_its_importer() -> None:
    name = "walrelay.no_such_module"
    thread = preload([name, "walrelay.units"])
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert name not in sys.modules and "walrelay.units" in sys.modules

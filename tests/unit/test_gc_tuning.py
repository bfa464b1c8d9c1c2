"""walrelay run's collector pace (walrelay.engine.gc_tuning)."""

from __future__ import annotations

import gc

from walrelay.engine.gc_tuning import (
    STREAMING_GC_THRESHOLD,
    skip_collections_at_exit,
    tune_gc_for_streaming,
)


def test_raises_only_the_first_threshold() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        tune_gc_for_streaming()
        assert gc.get_threshold() == (STREAMING_GC_THRESHOLD, 10, 10)
        tune_gc_for_streaming()  # idempotent
        assert gc.get_threshold() == (STREAMING_GC_THRESHOLD, 10, 10)
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_start_up_objects_are_frozen_and_collections_resume() -> None:
    before = gc.get_threshold()
    try:
        gc.disable()  # as walrelay run does before its start-up
        start_up = [[i] for i in range(100)]  # long-lived objects of the start-up
        tune_gc_for_streaming()
        assert gc.isenabled()
        assert gc.get_freeze_count() >= len(start_up)
    finally:
        gc.unfreeze()
        gc.enable()
        gc.set_threshold(*before)


def test_exit_leaves_the_objects_of_the_run_out_of_collections() -> None:
    run_objects = [[i] for i in range(100)]
    try:
        skip_collections_at_exit()
        assert gc.get_freeze_count() >= len(run_objects)
    finally:
        gc.unfreeze()

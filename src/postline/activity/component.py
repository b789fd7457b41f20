"""The activity component of the event pipeline (events/pipeline.py): not built yet."""

from __future__ import annotations

from postline.events.pipeline import Component, PipelineContext


def component(ctx: PipelineContext) -> Component | None:
    return None

"""POST /feedback: impressions, clicks and dwell for the A/B report."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter

from contract.constants import EFFICIENT_DWELL_S
from contract.errors import Unavailable
from service.api.deps import State
from service.api.schemas import FeedbackAccepted, FeedbackBatch
from service.infra import metrics as m

router = APIRouter(tags=["feedback"])


@router.post("/feedback", response_model=FeedbackAccepted,
             summary="Record impressions, clicks and dwell times for the A/B report")
async def feedback(batch: FeedbackBatch, state: State) -> FeedbackAccepted:
    now = time.time()
    events = [e.model_dump(exclude_none=True) | {"ts": e.ts or now} for e in batch.events]
    try:
        async with asyncio.timeout(max(1.0, state.settings.request_budget_ms / 1000 * 10)):
            await state.store.add_feedback(events)
    except Exception as e:  # noqa: BLE001 - feedback must not be lost silently: tell the caller to retry
        raise Unavailable(f"feedback store unavailable, retry later ({type(e).__name__})") from None
    arms = state.runtime.experiment.arm_names()  # labels come from the arms file, never from the caller
    for ev in batch.events:
        arm = ev.arm if ev.arm in arms else "other"
        m.FEEDBACK.labels(arm, ev.type).inc()
        if ev.type == "dwell" and (ev.dwell_s or 0) > EFFICIENT_DWELL_S:
            m.EFFICIENT_CLICKS.labels(arm).inc()
    return FeedbackAccepted(accepted=len(events))

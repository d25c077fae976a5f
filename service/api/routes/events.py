"""POST /events: a shop's events as they happen; the history types update users' histories at once."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from contract.constants import HISTORY_CAP
from contract.errors import Unavailable
from service.api.deps import State
from service.api.schemas import EventsAccepted, EventsBatch
from service.infra import metrics as m

router = APIRouter(tags=["events"])


@router.post("/events", response_model=EventsAccepted,
             summary="Record events (purchases, add-to-cart, clicks, ...); history types join the user's history")
async def events(batch: EventsBatch, state: State) -> EventsAccepted:
    evs = [e.to_event() for e in batch.events]
    # unknown products are counted against the first arm's bundle; its history cap applies
    bundle = next((b for b in state.runtime.bundles.values() if b is not None), None)
    version, cap = (bundle.version, bundle.history_cap) if bundle is not None else (None, HISTORY_CAP)
    try:
        async with asyncio.timeout(max(1.0, state.settings.request_budget_ms / 1000 * 10)):
            res = await state.store.append_events(evs, state.settings.history_types, version, cap,
                                                  state.settings.history_ttl_s)
    except Exception as e:  # noqa: BLE001 - events must not be lost silently: tell the caller to retry (it is idempotent)
        raise Unavailable(f"event store unavailable, retry later ({type(e).__name__})") from None
    for kind, n in res.accepted_types.items():
        m.EVENTS.labels(m.event_type_label(kind)).inc(n)
    m.EVENT_DUPLICATES.inc(res.duplicates)
    m.HISTORY_APPENDS.inc(res.history_appends)
    m.EVENT_UNKNOWN_PRODUCTS.inc(res.unknown_products)
    return EventsAccepted(accepted=res.accepted, duplicates=res.duplicates, history_appends=res.history_appends,
                          unknown_products=res.unknown_products)

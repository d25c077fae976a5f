"""Admin actions behind a bearer token: reload the arms file and bundles."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Depends

from contract.errors import HmppsError, Unavailable
from service.deps import State, require_admin
from service.runtime import load_runtime

router = APIRouter(tags=["admin"], dependencies=[Depends(require_admin)])


@router.post("/admin/reload", summary="Reload the arms file and bundles; requests keep flowing during the swap")
async def reload(state: State) -> dict[str, Any]:
    async with state.reload_lock:
        old = state.runtime
        try:
            runtime = await anyio.to_thread.run_sync(load_runtime, state.settings, old)
        except HmppsError as e:
            raise Unavailable(f"reload failed, still serving the previous runtime: {e}") from None
        state.runtime = runtime  # one assignment: in-flight requests keep the old runtime
        if state.settings.publish_missing:
            await anyio.to_thread.run_sync(state.publish_missing)
        await state.refresh_published()
        state.gauges.set(runtime.versions(), {a.name: a.weight for a in runtime.experiment.arms})
    return {"reloaded": True, "versions": runtime.versions(), "previous": old.versions()}

"""Admin actions behind a bearer token: reload the arms file and bundles, upsert products."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Depends

from contract.errors import HmppsError, InputError, Unavailable, Unprocessable
from service.api.deps import State, require_admin
from service.api.schemas import ProductsBatch, ProductsUpserted
from service.api.warmup import warm_from_traffic
from service.core.products import images_under, upsert_products
from service.core.runtime import Runtime, load_runtime
from service.infra import metrics as m

router = APIRouter(tags=["admin"], dependencies=[Depends(require_admin)])


@router.post("/admin/reload", summary="Reload the arms file and bundles; requests keep flowing during the swap")
async def reload(state: State) -> dict[str, Any]:
    async with state.reload_lock:
        old = state.runtime
        try:
            runtime = await anyio.to_thread.run_sync(load_runtime, state.settings, old)
        except HmppsError as e:
            raise Unavailable(f"reload failed, still serving the previous runtime: {e}") from None
        if state.settings.publish_missing:
            await anyio.to_thread.run_sync(state.publish_missing, runtime)
        # warm the new bundles on recent requests before any user request reaches them
        kept = {id(b) for b in old.bundles.values()}  # load_runtime reuses a bundle that did not change
        fresh = Runtime(runtime.experiment, {a: b for a, b in runtime.bundles.items() if b is None or id(b) not in kept})
        state.warmed = await warm_from_traffic(fresh, state.store, state.settings.warmup_requests)
        state.runtime = runtime  # one assignment: in-flight requests keep the old runtime
        await state.refresh_published()
        state.gauges.set(runtime.versions(), {a.name: a.weight for a in runtime.experiment.arms})
    return {"reloaded": True, "versions": runtime.versions(), "previous": old.versions(), "warmed": state.warmed}


@router.post("/admin/products", response_model=ProductsUpserted,
             summary="Upsert new or changed products into every loaded bundle version, encoded online")
async def upsert(batch: ProductsBatch, state: State) -> ProductsUpserted:
    products = images_under([p.to_product() for p in batch.products], state.settings.image_dir,
                            state.settings.max_image_bytes)
    bundles = {b.version: b for b in state.runtime.bundles.values() if b is not None}
    if not bundles:
        raise Unavailable("no bundle is loaded (every arm is passthrough)")

    def run() -> dict[str, dict[str, float]]:
        client = state.sync_client()
        return {v: upsert_products(client, b, products).as_dict() for v, b in bundles.items()}
    try:
        results = await anyio.to_thread.run_sync(run, limiter=state.limiter)
    except InputError:  # its text may name files on the host: say what failed, not where
        raise Unprocessable("could not encode the products (is every image a readable image?); "
                            "nothing was written") from None
    except HmppsError:
        raise
    except Exception as e:  # noqa: BLE001 - the previous features stay; the caller may retry (idempotent)
        raise Unavailable(f"product upsert failed, nothing changed for the failing products ({type(e).__name__})") from None
    m.PRODUCT_UPSERTS.inc(sum(r["written"] for r in results.values()))
    await state.refresh_published()
    return ProductsUpserted(versions=results)

"""Typed FastAPI dependencies shared by the routers."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from contract.errors import Forbidden, Unauthorized
from service.api.state import AppState


async def get_state(request: Request) -> AppState:
    # async on purpose: FastAPI runs a plain-def dependency in its thread pool, a thread hand-off per request
    state: AppState = request.app.state.hmpps
    return state


State = Annotated[AppState, Depends(get_state)]


async def require_admin(state: State, authorization: Annotated[str | None, Header()] = None) -> None:
    token_expected = state.settings.admin_token
    if not token_expected:
        raise Forbidden("admin endpoints are disabled: set HMPPS_ADMIN_TOKEN")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme != "Bearer" or not hmac.compare_digest(token.strip().encode(), token_expected.encode()):
        raise Unauthorized("missing or wrong admin token (Authorization: Bearer <token>)")

"""create_app() and create_router(): the service as an app, or as a router for your own."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from .._logs import get_logger
from ._http import ProblemRoute, problem_response, to_problem
from ._problems import Problem
from ._routes import add_routes
from ._server import redact_access_log
from ._settings import ServiceSettings
from ._state import open_state

__all__ = ["create_app", "create_router"]

logger = get_logger("photoroom_bg.service")

#: Headers of the service's answers that a page on another origin must read: the wait
#: before trying again (429, 503), a ZIP's counts and file name.
EXPOSED_HEADERS = ["Retry-After", "X-Success-Count", "X-Failed-Count", "Content-Disposition"]


def create_router(settings: ServiceSettings | None = None) -> APIRouter:
    """The service's endpoints as an :class:`fastapi.APIRouter` with its own lifespan.

    ``app.include_router(create_router(settings))`` adds them to your FastAPI app: the
    router's lifespan (merged into the app's) opens the sink, clients and executor at start-up
    and closes them at shutdown. Errors are problem details and bodies are capped by the
    router itself. Settings default to :meth:`ServiceSettings.from_env`, read at start-up.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        current = settings if settings is not None else ServiceSettings.from_env()
        async with open_state(current) as state:
            logger.info(
                "photoroom-bg service ready (sink %s, executor %s, auth %s)",
                current.sink,
                state.executor.name,
                "on" if state.auth.required else "off",
            )
            yield {"photoroom_bg": state}

    router = APIRouter(route_class=ProblemRoute, lifespan=lifespan)
    add_routes(router)
    return router


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The whole service: :func:`create_router` in a FastAPI app, with CORS when
    ``cors_origins`` are set (off by default) and problem details for every error."""
    current = settings if settings is not None else ServiceSettings.from_env()
    redact_access_log()  # served by uvicorn some other way than serve(), say
    app = FastAPI(
        title="photoroom-bg",
        version=__version__,
        description="Remove image backgrounds at scale with the Photoroom API.",
    )
    app.include_router(create_router(current))
    if current.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(current.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            # what a caller acts on, which browsers hide from scripts of another origin
            expose_headers=EXPOSED_HEADERS,
        )

    async def problems(request: Request, exc: Exception) -> JSONResponse:
        problem = to_problem(exc)
        if problem is None:  # a bug: logged with its traceback, answered without details
            logger.error("unexpected error on %s", request.url.path, exc_info=exc)
            problem = Problem(500, "internal_error", "Unexpected error")
        return problem_response(problem, request)

    app.add_exception_handler(StarletteHTTPException, problems)
    app.add_exception_handler(RequestValidationError, problems)
    app.add_exception_handler(Problem, problems)
    app.add_exception_handler(Exception, problems)
    return app

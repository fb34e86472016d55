"""The HTTP service: the original background-remover endpoints, over BatchRemover.

Needs the ``service`` extra (``pip install 'photoroom-bg[service]'``). Run it with
``photoroom-bg serve``, build it with :func:`create_app`, or add :func:`create_router` to your
own FastAPI app. Settings come from the environment (:class:`ServiceSettings`).
"""

from ._app import create_app, create_router
from ._auth import ANONYMOUS, RateLimiter, TokenAuth, token_owner
from ._executor import (
    EXECUTORS,
    OUTPUT_TEMPLATE,
    Executor,
    ExecutorContext,
    JobSpec,
    LiveJob,
    LocalExecutor,
    make_executor,
)
from ._jobs import JobService
from ._prefect import JobEndedWithoutSummary, PrefectExecutor, shared_sink_uri
from ._problems import PROBLEM_CODES, Problem, error_code, problem_for
from ._server import check_bind, serve
from ._settings import ENVIRONMENT, ServiceSettings
from ._store import JobRecord, JobStore, LocalClaims

__all__ = [
    "ANONYMOUS",
    "ENVIRONMENT",
    "EXECUTORS",
    "OUTPUT_TEMPLATE",
    "PROBLEM_CODES",
    "Executor",
    "ExecutorContext",
    "JobEndedWithoutSummary",
    "JobRecord",
    "JobService",
    "JobSpec",
    "JobStore",
    "LiveJob",
    "LocalClaims",
    "LocalExecutor",
    "PrefectExecutor",
    "Problem",
    "RateLimiter",
    "ServiceSettings",
    "TokenAuth",
    "check_bind",
    "create_app",
    "create_router",
    "error_code",
    "make_executor",
    "problem_for",
    "serve",
    "shared_sink_uri",
    "token_owner",
]

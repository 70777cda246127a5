"""The ASGI app: routes, errors in one JSON shape, API key, body-size cap, in-flight cap, metrics.

    create_app(TritonForwarder(grpc_url, repo, ApiConfig()), ApiConfig(), api_key=None)
"""

from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from bertforge.tasks import TASKS, resolve
from serve.api.common import InFlightLimiter, forwarder, json_response
from serve.api.errors import APIError, error_response
from serve.api.forward import TritonForwarder
from serve.api.metrics import ApiMetrics
from serve.config import ApiConfig

OPEN_PATHS = ("/health", "/ready")  # probes work without the key (they reveal nothing but up/down)
STARTED = int(time.time())


def create_app(forwarder: TritonForwarder, config: ApiConfig, api_key: str | None = None) -> FastAPI:
    metrics = ApiMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await forwarder.start()
        yield
        await forwarder.close()

    app = FastAPI(title="bertforge API", version="1", lifespan=lifespan,
                  description="OpenAI embeddings, text-embeddings-inference /embed, /tokenize, /decode, /info and "
                              "Hugging Face fill-mask, answered by the models in tritonserver (gRPC, dynamically "
                              "batched).")
    app.state.forwarder, app.state.config, app.state.metrics = forwarder, config, metrics
    app.state.limiter = InFlightLimiter(config.max_in_flight, metrics)
    # each family of tasks brings its router (bertforge.tasks.Task.routes), once however many tasks share it
    routers = [resolve(module).router for module in dict.fromkeys(task.routes for task in TASKS.values())]
    for router in routers:
        app.include_router(router)
    _add_model_routes(app)
    _add_probes(app, forwarder, metrics)
    # routes tagged "tei" answer errors in TEI's shape; metrics label known routes only
    app.state.routes = [route for router in (app.router, *routers) for route in router.routes if isinstance(route, APIRoute)]
    app.state.tei_routes = frozenset(route.path for route in app.state.routes if "tei" in route.tags)
    _add_error_handlers(app)
    # ASGI middleware, outermost last: metrics see every answer, also the 401s and 413s
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body_bytes, tei_routes=app.state.tei_routes)
    if api_key:
        app.add_middleware(BearerKey, api_key=api_key, tei_routes=app.state.tei_routes)
    known = frozenset(route.path for route in app.routes if hasattr(route, "path")) | {r.path for r in app.state.routes}
    app.add_middleware(RequestMetrics, metrics=metrics, known_routes=known)
    return app


def _add_model_routes(app: FastAPI) -> None:
    @app.get("/v1/models", tags=["openai"], summary="the served models, OpenAI's list shape")
    async def openai_models(request: Request) -> Response:
        return json_response({"object": "list", "data": [
            {"id": name, "object": "model", "created": STARTED, "owned_by": "bertforge", "task": model.settings.task}
            for name, model in forwarder(request).models.items()]})

    @app.post("/", include_in_schema=False)
    async def root(request: Request) -> Response:
        raise APIError(404, "POST / is ambiguous here (several models): post to a task's route, e.g. /fill-mask or "
                            "/embed: InferenceClient(model=f'{url}/fill-mask').fill_mask(...)", "unknown_route")


def _add_probes(app: FastAPI, forwarder: TritonForwarder, metrics: ApiMetrics) -> None:
    @app.get("/health", tags=["health"], summary="200 only if a real inference on each model just answered")
    async def health() -> Response:
        report = await forwarder.health()
        if report["healthy"]:
            return JSONResponse(report)
        reasons = "; ".join(f"{name}: {result['reason']}" for name, result in report["models"].items()
                            if not result["ok"])
        return JSONResponse({"error": {"message": f"unhealthy: {reasons}", "type": "service_unavailable",
                                       "code": "unhealthy"}} | report, status_code=503)

    @app.get("/ready", tags=["health"], summary="200 when Triton reports itself and both models ready")
    async def ready() -> Response:
        state = await forwarder.ready()
        if state.get("ready") and state.get("models") and all(state["models"].values()):
            return JSONResponse(state)
        message = f"Triton is not ready ({state.get('error') or state.get('models')})"
        return JSONResponse({"error": {"message": message, "type": "service_unavailable", "code": "not_ready"}}
                            | state, status_code=503)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics of this API (Triton's: its own port)")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _add_error_handlers(app: FastAPI) -> None:
    def tei(request: Request) -> bool:
        return request.url.path in app.state.tei_routes

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> Response:
        return error_response(error.status, error.message, error.code, error.headers, tei=tei(request))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        problems = error.errors()
        if any(problem.get("type") == "json_invalid" for problem in problems):
            return error_response(400, "the request body is not valid JSON", "invalid_json", tei=tei(request))
        described = "; ".join(f"{'.'.join(str(part) for part in problem.get('loc', ()) if part != 'body') or 'body'}: "
                              f"{problem.get('msg')}" for problem in problems[:5])
        return error_response(422, f"invalid request: {described} (see /docs for the schema)", "invalid_request",
                              tei=tei(request))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        if error.status_code == 404:
            return error_response(404, f"no route {request.method} {request.url.path}; routes: {_route_list(app)}",
                                  "unknown_route")
        if error.status_code == 405:
            return error_response(405, f"{request.method} is not allowed on {request.url.path}", "method_not_allowed",
                                  tei=tei(request))
        return error_response(error.status_code, str(error.detail), "http_error", tei=tei(request))


def _route_list(app: FastAPI) -> str:
    """`POST /v1/embeddings, ...; GET /v1/models, ...` of the documented routes, for the 404 message."""
    by_method: dict[str, list[str]] = {}
    for route in app.state.routes:
        if route.include_in_schema:
            for method in sorted(route.methods):
                by_method.setdefault(method, []).append(route.path)
    return "; ".join(f"{method} {', '.join(dict.fromkeys(paths))}" for method, paths in sorted(by_method.items(),
                                                                                          reverse=True))


class BodySizeLimit:
    """413 for a body over max_bytes: by Content-Length before reading, or as soon as the stream exceeds it."""

    def __init__(self, app, max_bytes: int, tei_routes: frozenset[str] = frozenset()):
        self.app, self.max_bytes, self.tei_routes = app, max_bytes, tei_routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send):
        response = error_response(413, f"request body over {self.max_bytes} bytes; send fewer or shorter texts "
                                       "(serve.api.max_body_bytes)", "body_too_large",
                                  tei=scope["path"] in self.tei_routes)
        await response(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


class BearerKey:
    """`Authorization: Bearer <key>` on every route but the probes, compared in constant time."""

    def __init__(self, app, api_key: str, tei_routes: frozenset[str] = frozenset()):
        self.app, self.expected, self.tei_routes = app, f"Bearer {api_key}".encode(), tei_routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            response = error_response(401, "missing or wrong API key: send `Authorization: Bearer <key>` "
                                           "(the key given to bertforge serve)", "invalid_api_key",
                                      {"WWW-Authenticate": "Bearer"}, tei=scope["path"] in self.tei_routes)
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class RequestMetrics:
    """Requests, errors by status and latency per route (unknown paths count as one route: no label explosion)."""

    def __init__(self, app, metrics: ApiMetrics, known_routes: frozenset[str]):
        self.app, self.metrics, self.known_routes = app, metrics, known_routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in self.known_routes else "other"
        started = time.perf_counter()
        status = {"code": 500}

        async def record_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            code = str(status["code"])
            self.metrics.requests.labels(route, code).inc()
            if status["code"] >= 400:
                self.metrics.errors.labels(route, code, _error_class(status["code"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


def _error_class(status: int) -> str:
    return {400: "bad_request", 401: "unauthorized", 404: "not_found", 413: "too_large", 422: "invalid",
            429: "too_many_requests", 503: "unavailable"}.get(status, "other")

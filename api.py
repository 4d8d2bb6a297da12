"""The HTTP API: Capillary's /v2/otp endpoints and its OAuth token endpoint over the engine in core, and nothing more."""
from __future__ import annotations

import asyncio
import base64
import gc
import hmac
import json
import logging
import sys
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from core import errors as E
from core import faults, metrics
from core.admin.clients import PERMISSION_OTP_WRITE, ClientIdentity
from core.admin.tokens import read_token_request
from core.delivery.gateways.http import close_shared_client
from core.enums import Action, Channel, EntityType
from core.errors import OtpError
from core.issuing.entities import DEFAULT_ORG
from core.issuing.org_settings import UnknownOrganisation
from core.net import end_user_address
from core.runtime import Runtime
from core.services import receipts
from core.services.failover import fail_over_delivery, run_due_failovers
from core.services.generation import generate
from core.services.validation import validate
from core.settings import Settings, settings_or_exit

log = logging.getLogger("otp.api")


# Shapes for the OpenAPI description only: bodies are read and checked by core.issuing.requests, which
# reports every problem with Capillary's codes instead of FastAPI's 422. The names come from core.enums.
ChannelName = Literal[(*(c.value for c in Channel), "MOBILE")]  # type: ignore[valid-type]
EntityTypeName = Literal[tuple(e.value for e in EntityType)]  # type: ignore[valid-type]
ActionName = Literal[tuple(a.value for a in Action)]  # type: ignore[valid-type]


class ChannelBody(BaseModel):
    type: ChannelName = Field(
        description="case-insensitive; MOBILE and PHONE both mean a voice call")
    value: str = Field(description="phone number or email address for this channel")


class EmailTemplateBody(BaseModel):
    subject: str | None = None
    body: str = Field(description="must contain {{ validation_code }} exactly once")


class GenerateBody(BaseModel):
    entityType: EntityTypeName = Field(description="case-insensitive")
    entityValue: str
    action: ActionName = Field(description="case-insensitive")
    template: str | None = Field(None, description="SMS text with {{ validation_code }} exactly once")
    emailTemplate: EmailTemplateBody | None = None
    whatsappTemplateName: str | None = None
    whatsappTemplateLanguage: str | None = None
    zaloTemplateIdentifier: str | None = None
    channels: list[ChannelBody] | None = None


class ValidateBody(BaseModel):
    entityType: EntityTypeName = Field(description="case-insensitive")
    entityValue: str
    action: ActionName = Field(description="case-insensitive")
    code: str = Field(description="the code the customer received: ASCII digits or letters")


class ProblemBody(BaseModel):
    status: bool = False
    code: int
    message: str


class GenerateResponse(BaseModel):
    createdId: int = Field(description="id of the OTP request; 1 when the same code was re-sent")
    warnings: list[ProblemBody]


class ValidateResponse(BaseModel):
    entity: bool
    warnings: list[ProblemBody]


class ErrorResponse(BaseModel):
    errors: list[ProblemBody]
    warnings: list[ProblemBody]


class TokenRequestBody(BaseModel):
    key: str = Field(description="the API client's key")
    secret: str = Field(description="the API client's secret")


class TokenData(BaseModel):
    accessToken: str = Field(description="a JWT (HS256); send it in the CAP-API-ACCESS-TOKEN header")
    ttlSeconds: int = Field(description="seconds the token is valid for (set per API client)")


class TokenResponse(BaseModel):
    data: TokenData
    errors: None = None


class TokenErrorResponse(ErrorResponse):
    data: None = None


# Capillary's header for an OAuth access token, and the other name its clients use.
TOKEN_HEADERS = ("CAP-API-ACCESS-TOKEN", "X-CAP-API-OAUTH-TOKEN")


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 408, 413, 422, 429, 500, 502, 503)}


def _body_schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema as an OpenAPI request body, its nested models hoisted into components."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}


def _error_response(error: OtpError, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if error.retry_after:
        headers["Retry-After"] = str(error.retry_after)
    if error.http_status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="otp", Bearer'
    if error.http_status == 408:  # the rest of the body may still trickle in: end the connection, not the wait
        headers["Connection"] = "close"
    return JSONResponse(error.envelope(), status_code=error.http_status, headers=headers or None)


async def read_body(settings: Settings, headers: Headers, receive: Receive) -> bytes:
    """The raw body, refusing an oversized one before reading it whole, and a slow one after body_read_seconds.

    Without the time limit a client sending one byte a second holds a connection (and what it sent so far)
    for as long as it likes; many such clients exhaust a worker. 408 closes the connection. A client that
    hangs up before the end of its body raises ClientDisconnect.
    """
    limit = settings.max_body_bytes
    declared = headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise OtpError.single(E.INVALID_BODY, "the Content-Length header is not a number")
        if int(declared) > limit:
            raise OtpError.single(E.INVALID_BODY, f"the request body is larger than {limit} bytes", 413)
    chunks, size, more = [], 0, True
    try:
        async with asyncio.timeout(settings.body_read_seconds):
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    raise ClientDisconnect()
                chunk, more = message.get("body", b""), message.get("more_body", False)
                size += len(chunk)
                if size > limit:
                    raise OtpError.single(E.INVALID_BODY, f"the request body is larger than {limit} bytes", 413)
                chunks.append(chunk)
    except TimeoutError:
        raise OtpError.single(E.INVALID_BODY, f"the request body did not arrive within "
                              f"{settings.body_read_seconds:g} seconds", 408) from None
    return b"".join(chunks)


async def read_json(settings: Settings, headers: Headers, receive: Receive) -> object:
    """The parsed body; anything that is not JSON is refused with the envelope."""
    body = await read_body(settings, headers, receive)
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise OtpError.single(E.INVALID_BODY, "the request body is not valid JSON") from None


def _credentials(headers: Headers) -> tuple[str, str] | None:
    header = headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except ValueError:  # binascii.Error, UnicodeDecodeError and non-ASCII input alike
            return None
        key, sep, secret = decoded.partition(":")
    elif scheme.lower() == "bearer":
        key, sep, secret = value.partition(".")
    else:
        return None
    return (key, secret) if sep and key and secret else None


async def verified_client(runtime: Runtime, key: str, secret: str) -> ClientIdentity | None:
    """The active client for key and secret, or None; the slow hash runs off the event loop, at most a few at a
    time (ClientAuthenticator), for the Basic and Bearer headers and the token endpoint alike."""
    client = runtime.auth.cached(key, secret)
    if client is None:
        client = await run_in_threadpool(runtime.auth.verify, key, secret)
    return client


async def token_client(runtime: Runtime, token: str) -> ClientIdentity | None:
    """The still-active client an OAuth access token was issued to, or None (bad, expired, revoked, or its
    org_id claim is not the client's organisation: checked on every use)."""
    found = runtime.tokens.verify(token, now=runtime.clock())
    if found is None:
        return None
    client_id, org_id = found
    known, client = runtime.auth.cached_by_id(client_id)
    if not known:  # a read of the client's row at most once per OTP_AUTH_CACHE_SECONDS
        client = await run_in_threadpool(runtime.auth.by_id, client_id)
    if client is None or client.org_id != org_id:
        return None
    return client


async def authorised_client(runtime: Runtime, headers: Headers) -> ClientIdentity:
    """The calling API client with otp:write; 401 without valid credentials, 403 without the permission.

    An OAuth access token header, when present, is the credential (a bad token is not retried as Basic).
    Awaited by the handlers themselves rather than declared as a FastAPI dependency: resolving a dependency
    costs more per request than this check does (the schema's security entries are added in openapi()).
    """
    token = next((value for name in TOKEN_HEADERS if (value := headers.get(name)) is not None), None)
    if token is not None:
        client = await token_client(runtime, token.strip())
        if client is None:
            raise OtpError.single(401, "invalid or expired access token: get a new one from "
                                       "/v3/oauth/token/generate", 401)
    else:
        credentials = _credentials(headers)
        if credentials is None:
            raise OtpError.single(401, "authentication required: HTTP Basic (key:secret), Bearer key.secret, or "
                                       "an access token in CAP-API-ACCESS-TOKEN", 401)
        client = await verified_client(runtime, *credentials)
        if client is None:
            raise OtpError.single(401, "invalid API credentials", 401)
    if PERMISSION_OTP_WRITE not in client.permissions:
        raise OtpError.single(403, f"this API client lacks the {PERMISSION_OTP_WRITE} permission", 403)
    return client


async def answer_generate(runtime: Runtime, scope: Scope, receive: Receive) -> Response:
    """POST /v2/otp/generate: the client's credentials, the end user's address, then the engine."""
    headers = Headers(scope=scope)
    client = await authorised_client(runtime, headers)
    peer = scope["client"][0] if scope.get("client") else ""
    ip = end_user_address(peer, headers, runtime.settings, end_user_ip_header=client.end_user_ip_header)
    # The organisation is the client's, never the request's: no body field or header can name another.
    result = await generate(runtime, await read_json(runtime.settings, headers, receive), org_id=client.org_id,
                            client_id=client.id, client_ip=ip)
    return JSONResponse(result.body())


async def answer_validate(runtime: Runtime, scope: Scope, receive: Receive) -> Response:
    """POST /v2/otp/validate: the client's credentials, then the engine."""
    headers = Headers(scope=scope)
    client = await authorised_client(runtime, headers)
    result = await validate(runtime, await read_json(runtime.settings, headers, receive), org_id=client.org_id,
                            client_id=client.id)
    return JSONResponse(result.body())


OTP_ROUTES = {"/v2/otp/generate": answer_generate, "/v2/otp/validate": answer_validate}


def _http_error_response(exc: StarletteHTTPException) -> JSONResponse:
    """Unknown paths, wrong methods and other HTTP errors in the same envelope as everything else, with their
    headers: a 405 names the allowed methods in Allow (RFC 9110). Routes set it; the docs' static files (a mount)
    do not, and serve only GET and HEAD."""
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers.setdefault("Allow", "GET, HEAD")
    return _error_response(OtpError.single(exc.status_code, str(exc.detail), exc.status_code), headers)


def _client_gone(method: str, path: str) -> Response:
    """Nobody is left to answer; the reply goes nowhere. One line, no traceback: a client's network dropping is
    not our bug."""
    log.warning("client hung up before sending the whole request body: %s %s", method, path)
    return Response(status_code=400)


# The exceptions a handler is expected to raise, answered by expected_answer on every path: the app's exception
# handlers and OtpRoutes alike.
EXPECTED = (OtpError, StarletteHTTPException, ClientDisconnect)


def expected_answer(exc: Exception, method: str, path: str) -> Response:
    """The answer to one of the EXPECTED exceptions: Capillary's envelope, or nothing for a client that hung up."""
    if isinstance(exc, OtpError):
        return _error_response(exc)
    if isinstance(exc, StarletteHTTPException):
        return _http_error_response(exc)
    return _client_gone(method, path)


def _route_path(scope: Scope) -> str:
    """The path the app routes on: the request's, less the root path a proxy mounts the service under."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


class OtpRoutes:
    """POST /v2/otp/generate and /v2/otp/validate go straight to answer_generate and answer_validate, past
    Starlette's router and FastAPI's request handling.

    They are nearly all of the traffic, and the framework's share of a validate was about a quarter of its CPU
    time (bench/profile_engine.py --http: FastAPI 14 %, Starlette 14 %). The routes stay declared on the app, for
    the OpenAPI description, and call the same functions; another method on these paths (405 with Allow) and
    every other path go on to the app. The app's exception handlers are not on this path: the EXPECTED exceptions
    are answered here by the same expected_answer, anything else is a bug for AnswerUnexpectedErrors.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or (
                answer := OTP_ROUTES.get(_route_path(scope))) is None:
            await self.app(scope, receive, send)
            return
        try:
            response = await answer(scope["app"].state.runtime, scope, receive)
        except EXPECTED as exc:
            response = expected_answer(exc, scope["method"], scope["path"])
        await response(scope, receive, send)


class AnswerUnexpectedErrors:
    """The outermost handler of our own: an exception no handler expected becomes one log entry and an answer.

    A bug answers 500 with 7005 and its traceback, messages withheld (core.faults); the database being
    unavailable answers 503 with 606. Starlette's own catch-all (exception_handler(Exception)) re-raises
    after answering, so the server would log the exception a second time with its message: this one ends it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            if scope["type"] != "http":
                raise
            error = faults.unexpected_failure(exc, method=scope["method"], path=scope["path"])
            try:
                await _error_response(error)(scope, receive, send)
            except RuntimeError:  # the response had already started: the server closes the connection
                pass


def _metrics_response(request: Request) -> Response:
    """The Prometheus text, or 404 when metrics are off, or 401 without the configured bearer token."""
    settings = request.app.state.runtime.settings
    if settings.metrics != "on":
        raise OtpError.single(404, "Not Found", 404)
    if settings.metrics_token:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                 settings.metrics_token.encode()):
            raise OtpError.single(401, "the metrics need Authorization: Bearer <OTP_METRICS_TOKEN>", 401)
    body, media_type = metrics.exposition()
    return Response(body, media_type=media_type)


async def _fail_over_forever(runtime: Runtime) -> None:
    """Send the next channel for deliveries whose receipt did not arrive in time."""
    while True:
        await asyncio.sleep(runtime.settings.failover_poll_seconds)
        try:
            await run_due_failovers(runtime)
        except Exception as exc:  # the poller must outlive a failed round (a database restart, say)
            log.warning("failover round failed: %s", type(exc).__name__)


def _freeze_startup_heap() -> None:
    """Keep what start-up built (modules, the database engine, caches: ~160 000 objects) out of every later
    full garbage collection. Each full collection walked all of it (~90 ms here) and, under load, one came
    every ~800 generates: ~20 % of a generate's time (bench/engine.py: 1600 -> 2000 generates/s, p99
    125 -> 40 ms). What start-up built lives as long as the process anyway; garbage is collected first.
    """
    gc.collect()
    gc.freeze()


def _switch_threads_often() -> None:
    """Let a thread waiting for the GIL have it after 1 ms instead of Python's default 5 ms.

    A worker runs its event loop and the PostgreSQL batches' thread (core.db.groupcommit) side by side: with 5 ms,
    a request that is ready to answer could wait up to that long behind a batch's CPU-bound work, many times per
    request under load. bench/load.py, PostgreSQL, 2 workers, 32 in flight: generate p99 91 and 81 ms -> 88, 81
    and 77 ms at the same rate (and, before the batches, 84-109 ms -> 63-84 ms).
    """
    sys.setswitchinterval(0.001)


def create_app(runtime: Runtime | None = None, settings: Settings | None = None) -> FastAPI:
    """The API over runtime (a test's), or over a Runtime built at start-up from settings (a server's)."""
    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        if not hasattr(app.state, "runtime"):  # a server process (a test passes its own runtime)
            app.state.runtime = Runtime(settings)
            _freeze_startup_heap()
            _switch_threads_often()
        metrics.worker_started()
        poller = asyncio.create_task(_fail_over_forever(app.state.runtime))
        yield
        poller.cancel()
        await close_shared_client()

    # FastAPIOffline serves Swagger UI's files itself (FastAPI's /docs loads them from a CDN): the docs work on a
    # host with no internet access, and the page runs no third-party script. No ReDoc page: its bundle still
    # fetches a logo from its vendor's CDN, and /docs is the one the contract names.
    app = FastAPIOffline(title="OTP service", version="1.0", redoc_url=None,
                         description="Capillary-compatible /v2/otp generate and validate.", lifespan=lifespan)
    app.add_middleware(OtpRoutes)
    app.add_middleware(AnswerUnexpectedErrors)  # added last: the outer of the two
    if runtime is not None:
        app.state.runtime = runtime
    body_components: dict[str, Any] = {}
    generate_body = _body_schema(GenerateBody, body_components)
    validate_body = _body_schema(ValidateBody, body_components)
    token_body = _body_schema(TokenRequestBody, body_components)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {}).update(body_components)
            components["securitySchemes"] = {
                "basic": {"type": "http", "scheme": "basic", "description": "API client key and secret"},
                "bearer": {"type": "http", "scheme": "bearer", "description": "<key>.<secret>"},
                "capAccessToken": {"type": "apiKey", "in": "header", "name": TOKEN_HEADERS[0],
                                   "description": "an access token from POST /v3/oauth/token/generate"},
                "capOauthToken": {"type": "apiKey", "in": "header", "name": TOKEN_HEADERS[1],
                                  "description": "the same access token under the other header name"}}
            for path in ("/v2/otp/generate", "/v2/otp/validate"):
                schema["paths"][path]["post"]["security"] = [
                    {"basic": []}, {"bearer": []}, {"capAccessToken": []}, {"capOauthToken": []}]
            schema["paths"]["/v3/oauth/token/generate"]["post"]["security"] = []  # the body carries them
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    async def _expected(request: Request, exc: Exception) -> Response:
        return expected_answer(exc, request.method, request.url.path)

    for kind in EXPECTED:
        app.add_exception_handler(kind, _expected)

    # Taken by OtpRoutes before they reach the router: declared here for the OpenAPI description.
    @app.post("/v2/otp/generate", response_model=GenerateResponse, responses=_ERRORS,
              openapi_extra={"requestBody": generate_body})
    async def generate_otp(request: Request) -> Response:
        return await answer_generate(request.app.state.runtime, request.scope, request.receive)

    @app.post("/v2/otp/validate", response_model=ValidateResponse, responses=_ERRORS,
              openapi_extra={"requestBody": validate_body})
    async def validate_otp(request: Request) -> Response:
        return await answer_validate(request.app.state.runtime, request.scope, request.receive)

    @app.post("/v3/oauth/token/generate", response_model=TokenResponse,
              responses={status: {"model": TokenErrorResponse} for status in (400, 401, 413, 503)},
              openapi_extra={"requestBody": token_body})
    async def generate_access_token(request: Request) -> JSONResponse:
        """Capillary's OAuth: an access token for an API client's key and secret, valid for the client's TTL.

        Refusals travel in the usual envelope with Capillary's `data: null` beside it. A wrong secret costs
        the same slow hash as one in a Basic header, run off the event loop at most a few at a time.
        """
        runtime_: Runtime = request.app.state.runtime
        try:
            key, secret = read_token_request(await read_json(runtime_.settings, request.headers, request.receive))
            client = await verified_client(runtime_, key, secret)
            if client is None:
                raise OtpError.single(401, "invalid API client key or secret", 401)
        except OtpError as exc:
            return JSONResponse({"data": None, **exc.envelope()}, status_code=exc.http_status)
        issued = runtime_.tokens.issue(client_id=client.id, org_id=client.org_id,
                                       ttl_seconds=client.token_ttl_seconds, now=runtime_.clock())
        return JSONResponse({"data": {"accessToken": issued.access_token, "ttlSeconds": issued.ttl_seconds},
                             "errors": None}, headers={"Cache-Control": "no-store"})

    receipt_responses = {**_ERRORS, 404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}}

    @app.post("/v2/otp/receipts/{gateway}", responses=receipt_responses)
    async def delivery_receipt(gateway: str, request: Request) -> JSONResponse:
        """A provider's status callback for a gateway of the default organisation, authenticated by the provider's
        signature (no API credentials)."""
        return await _receipt(request, DEFAULT_ORG, gateway)

    @app.post("/v2/otp/receipts/{org}/{gateway}", responses=receipt_responses)
    async def org_delivery_receipt(org: str, gateway: str, request: Request) -> JSONResponse:
        """A provider's status callback for a gateway of the organisation with slug org: verified with that
        organisation's gateway secret, and only that organisation's deliveries can be changed by it."""
        try:
            org_id = request.app.state.runtime.org_by_slug(org).id
        except UnknownOrganisation:
            raise OtpError.single(404, "no such gateway", 404) from None
        return await _receipt(request, org_id, gateway)

    async def _receipt(request: Request, org_id: int, gateway: str) -> JSONResponse:
        runtime_: Runtime = request.app.state.runtime
        body = await read_body(runtime_.settings, request.headers, request.receive)
        url = str(request.url)
        if runtime_.settings.public_url:  # Twilio signs the URL it called, query string included
            url = runtime_.settings.public_url.rstrip("/") + request.url.path + (
                f"?{request.url.query}" if request.url.query else "")
        try:
            outcome = await run_in_threadpool(receipts.apply_receipt, runtime_, gateway, org_id=org_id, url=url,
                                              headers=dict(request.headers), body=body)
        except receipts.ReceiptRefused as exc:
            raise OtpError.single(exc.http_status, str(exc), exc.http_status) from None
        if outcome.changed and outcome.status == "failed":
            await fail_over_delivery(runtime_, outcome.delivery_id)
        return JSONResponse({"delivery": outcome.delivery_id, "status": outcome.status})

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(request: Request) -> Response:
        return await run_in_threadpool(_metrics_response, request)  # merging the workers' files reads disk

    @app.get("/health", responses={503: {"description": "the database is unreachable"}})
    async def health(request: Request) -> JSONResponse:
        try:
            with request.app.state.runtime.read_db.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # reported, not raised: health must answer even when the database is down
            return JSONResponse({"status": "unavailable", "database": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok"})

    return app


# Settings are checked when the server imports this module: a bad one stops it with one line naming it.
app = create_app(settings=settings_or_exit())

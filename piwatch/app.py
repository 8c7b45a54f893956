"""The FastAPI app: routes, the token every change needs, the 422 wording, and the lifespan that
owns the board and worker.

Hardware sits behind the `get_worker` dependency so tests can swap in a worker over mock pins
(`app.dependency_overrides[get_worker] = ...`) or pass their own `Lights` to `create_app`.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Body, Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

import piwatch
from piwatch.events import Event, KubewatchPayload
from piwatch.guard import RequestGuard
from piwatch.lights import Lights, open_lights
from piwatch.reactions import Reactions, load_reactions
from piwatch.settings import Settings
from piwatch.tokens import ingest_token
from piwatch.worker import Worker

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("static") / "index.html"

PAYLOAD_HINT = (
    'expected kubewatch webhook JSON: {"eventmeta": {"kind": "pod", "name": "web-1", '
    '"namespace": "default", "reason": "created"}, "text": "...", "time": "2024-01-01T00:00:00Z"}'
)


class TokenMissing(Exception):
    """PiWatch would listen beyond this machine with no token: anyone there could drive it."""


class Unauthorised(Exception):
    """Raised by the token dependencies; answered as a 401 in PiWatch's {"message": ...} form."""


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Accepted(BaseModel):
    accepted: bool = True
    event: dict


class SelfTestRequest(BaseModel):
    buzzer: bool = False


def get_worker(request: Request) -> Worker:
    return request.app.state.worker


WorkerDep = Annotated[Worker, Depends(get_worker)]

# auto_error=False: a missing token is answered by create_app's check, in PiWatch's own words.
bearer = HTTPBearer(auto_error=False, scheme_name="PiWatchToken",
                    description="the cluster's piwatch-webhook-token (secrets/ next to cluster.yaml)")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


def create_app(
    settings: Settings | None = None,
    *,
    lights: Lights | None = None,
    reactions: Reactions | None = None,
) -> FastAPI:
    """Build the app; the board is opened at startup (not import) so tests and docs stay cheap."""
    settings = settings or Settings()
    # Load reactions now: a broken reactions file should stop the service loudly at start.
    reactions = reactions or load_reactions(settings.reactions_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        board = lights or open_lights(mock=settings.mock_pins,
                                      button_pull_up=settings.button_pull_up)
        worker = Worker(board, reactions, settings)
        worker.start()
        app.state.worker = worker
        try:
            yield
        finally:
            worker.stop()
            board.all_off()
            if lights is None:  # only close what we opened; a test may inspect its own board
                board.close()

    app = FastAPI(
        title="PiWatch",
        version=piwatch.__version__,
        description="Kubernetes events from kubewatch, shown on the router's traffic lights.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(RequestGuard, allowed_hosts=[settings.host, *settings.allowed_host_names])

    @app.exception_handler(RequestValidationError)
    async def explain_422(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            if err["type"] == "json_invalid":
                # loc holds the character offset here, not a field path.
                problems.append(f"body is not valid JSON ({err.get('ctx', {}).get('error', err['msg'])}"
                                f" at character {err['loc'][-1]})")
                continue
            where = ".".join(str(p) for p in err["loc"] if p != "body") or "body"
            problems.append(f"{where}: {err['msg']}")
        message = "; ".join(problems) + f" ({PAYLOAD_HINT})"
        # Keep FastAPI's structured list under "detail" for programs; "message" is for people.
        return JSONResponse(status_code=422, content={"message": message,
                                                      "detail": jsonable(exc.errors())})

    # Issue 18: any LAN host or pod could post events, run the self-test or silence an alarm.
    # Every route that changes something needs the token made at bake time (systemd hands it
    # over), sent as `Authorization: Bearer <token>`. The Origin/Host checks (piwatch.guard) only
    # stop browsers: curl sets any Origin it likes, so they cannot stand in for the token.
    webhook_token = settings.webhook_token()
    if webhook_token == "":  # `?token=` would then let anyone in
        raise TokenMissing("PiWatch's token file is empty: write the cluster's token into it")
    if webhook_token is None and not is_loopback(settings.host):
        raise TokenMissing(
            f"PiWatch would listen on {settings.host} with no token, open to every device there:"
            " give it one (systemd credential webhook-token, or PIWATCH_WEBHOOK_TOKEN_FILE),"
            " or listen on 127.0.0.1")
    if webhook_token is None:
        log.warning("no token (PIWATCH_WEBHOOK_TOKEN_FILE): any program on this machine may"
                    " change the lights")

    # kubewatch's URL carries a narrower token than the full one (piwatch.tokens says why): it
    # opens the webhook routes only.
    ingest = ingest_token(webhook_token) if webhook_token else None

    def matches(presented: str | None, expected: str | None) -> bool:
        return presented is not None and expected is not None and hmac.compare_digest(
            presented.encode(), expected.encode())

    def refuse(request: Request, presented: str | None) -> Unauthorised:
        # The access log is off (piwatch.__main__), so refusals are logged here; never the token.
        log.warning("refused %s %s from %s: %s token", request.method, request.url.path,
                    request.client.host if request.client else "?", "wrong" if presented else "no")
        return Unauthorised()

    def require_token(request: Request, credentials: Credentials) -> None:
        presented = credentials.credentials if credentials else None
        if webhook_token is None or matches(presented, webhook_token):
            return
        raise refuse(request, presented)

    def require_webhook_token(request: Request, credentials: Credentials, token: str | None = None) -> None:
        """The full token in the header, or the ingest token in the header or as `?token=`:
        kubewatch's webhook handler sets no header but Content-Type (robusta-dev/kubewatch
        pkg/handlers/webhook/webhook.go), so its URL has to carry one. The full token is never
        taken from a URL: a URL ends up in logs and history."""
        presented = credentials.credentials if credentials else token
        if webhook_token is None or matches(presented, ingest):
            return
        if credentials and matches(presented, webhook_token):
            return
        raise refuse(request, presented)

    @app.exception_handler(Unauthorised)
    async def explain_401(request: Request, exc: Unauthorised) -> JSONResponse:
        return JSONResponse(status_code=401, headers={"WWW-Authenticate": "Bearer"}, content={
            "message": "send the cluster's PiWatch token: Authorization: Bearer <token> (the token is"
                       " secrets/piwatch-webhook-token next to cluster.yaml); on the webhook routes,"
                       " ?token= takes only the event-only token the bake gives kubewatch"})

    needs_token = [Depends(require_token)]

    def accept(worker: Worker, payload: KubewatchPayload) -> Accepted:
        event = worker.submit(Event.from_payload(payload))
        log.info("event %s/%s %s %s -> %s %s", event.namespace, event.name, event.kind,
                 event.reason, event.direction, event.colour)
        return Accepted(event=event.as_dict())

    @app.post("/kubewatch", status_code=202, response_model=Accepted, tags=["events"],
              dependencies=[Depends(require_webhook_token)])
    def kubewatch(payload: KubewatchPayload, worker: WorkerDep) -> Accepted:
        """Receive one kubewatch webhook event; returns at once, the lights follow shortly."""
        return accept(worker, payload)

    @app.post("/traffic/kubewatch-webhook", status_code=202, response_model=Accepted,
              tags=["legacy"], dependencies=[Depends(require_webhook_token)])
    def legacy_post(payload: KubewatchPayload, worker: WorkerDep) -> Accepted:
        """The seed's webhook path, kept so an old kubewatch config keeps working."""
        return accept(worker, payload)

    @app.get("/traffic/kubewatch-webhook", tags=["legacy"])
    def legacy_get() -> JSONResponse:
        """The seed cycled every light on any request, so any page could (an <img> tag will do):
        a GET changes nothing now."""
        return JSONResponse(status_code=405, headers={"Allow": "POST"}, content={
            "message": "POST kubewatch's JSON here; the self-test is POST /lights/test"})

    @app.get("/healthz", tags=["status"])
    def healthz(worker: WorkerDep) -> JSONResponse:
        ok = worker.alive
        body = {"status": "ok" if ok else "worker stopped", "gpio": worker.lights.backend,
                "gpio_note": worker.lights.backend_note, "version": piwatch.__version__,
                "pending": worker.pending()}
        return JSONResponse(status_code=200 if ok else 503, content=body)

    @app.get("/lights", tags=["status"])
    def get_lights(worker: WorkerDep) -> dict:
        """Every LED ("off"/"on"/"blink"), the buzzer, open alarms and counters."""
        return worker.state()

    @app.post("/lights/test", status_code=202, tags=["status"], dependencies=needs_token)
    def self_test(worker: WorkerDep,
                  request: Annotated[SelfTestRequest | None, Body()] = None) -> dict:
        """Queue a self-test: each colour on every light, then a walk round the compass."""
        buzzer = request.buzzer if request else False
        worker.request_self_test(buzzer=buzzer)
        return {"accepted": True, "self_test": True, "buzzer": buzzer}

    @app.post("/alarm/ack", tags=["status"], dependencies=needs_token)
    def acknowledge(worker: WorkerDep) -> dict:
        """Same as pressing the board's button: silence the buzzer, acknowledge alarms."""
        return {"acknowledged": worker.acknowledge()}

    @app.get("/events", tags=["events"])
    def events(worker: WorkerDep, limit: int = 20) -> list[dict]:
        """The most recent events, newest first."""
        return worker.recent(max(0, limit))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        # No other site may frame the page and trick a click on its buttons.
        return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={
            "X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"})

    return app


def jsonable(errors: list[dict]) -> list[dict]:
    """Pydantic error dicts may hold exceptions or bytes in `ctx`/`input`; keep them printable."""
    out = []
    for err in errors:
        clean = {k: v for k, v in err.items() if k in ("type", "loc", "msg")}
        if "input" in err:
            value = err["input"]
            clean["input"] = value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else repr(value)
        out.append(clean)
    return out

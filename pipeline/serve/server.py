"""Running the doors: one asyncio loop (uvloop) serving HTTP (uvicorn) and gRPC (grpc.aio),
an `EngineLoop` thread running the engine's batches.

`serve` is `pipeline serve`: it builds the engine, warms the models (ready only then),
opens the doors and, on SIGTERM or SIGINT, stops accepting, answers what is in flight and
returns 0. `DoorsThread` runs the same doors beside a Kafka worker (`pipeline run
--http-port/--grpc-port`), on the worker's engine: one process, one model cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import uvicorn
import uvloop

from pipeline.config import DoorSettings, ServeConfig
from pipeline.engine.engine import Engine, EngineLoop
from pipeline.engine.setup import build_engine, unready_reason, warm_up_models
from pipeline.metrics import Sensor, Sensors
from pipeline.metrics.health import Readiness
from pipeline.metrics.prometheus import PrometheusSensor
from pipeline.metrics.statsline import StatsLine
from pipeline.serve.calls import ModelCalls
from pipeline.serve.company import Company
from pipeline.serve.grpcapp import TokenInterceptor, add_services
from pipeline.serve.guard import guarded_http
from pipeline.serve.httpapp import HttpApp
from pipeline.serve.security import Tls, TokenCheck, Watcher
from pipeline.startup import early_stop

__all__ = ["Doors", "DoorsThread", "serve"]

log = logging.getLogger("pipeline.serve")
_GRACE_S = 5.0  # in-flight requests get this long after SIGTERM
ENGINE_STALE_AFTER_S = 30.0
"""`/healthz` fails once the engine loop has not turned for this long (it turns at least
every 0.5 s when idle, and after every batch), so an orchestrator restarts a stuck server."""


class _Uvicorn(uvicorn.Server):
    """uvicorn, without its own signal handling: the doors stop both servers together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Doors:
    """The HTTP and gRPC doors of one process, on one asyncio loop.

    Args:
        settings: Where they listen and their bounds.
        engine: The engine their callers share.
        readiness: What the health endpoints report.
        sensor: Receives the requests.
        when_idle: The engine's loop runs rows as soon as it is free (``--dispatch
            when-idle``); then a lone caller's rows run at once on the doors' loop (see
            `ModelCalls`).
    """

    def __init__(
        self,
        settings: DoorSettings,
        engine: Engine[Any],
        readiness: Readiness,
        sensor: Sensor,
        *,
        default_model: str | None,
        metrics: PrometheusSensor | None = None,
        when_idle: bool = False,
        company: Company | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._readiness = readiness
        self._calls = ModelCalls(
            engine, default_model=default_model or _only_model(engine),
            max_rows=settings.max_rows_per_request, sensor=sensor, run_lone_now=when_idle,
            company=company,
        )  # fmt: skip
        self._sensor = sensor
        self._http: _Uvicorn | None = None
        self._grpc: grpc.aio.Server | None = None
        # Read at start-up, so a bad certificate or token file stops the command at once.
        self._tls = Tls(settings.tls_cert, settings.tls_key, settings.tls_client_ca) if (
            settings.tls_cert and settings.tls_key
        ) else None  # fmt: skip
        self._tokens = TokenCheck(settings.auth_token_file) if settings.auth_token_file else None
        self._watcher = Watcher(self._tls, self._tokens)

    async def start(self) -> None:
        """Open the doors (those with a port)."""
        s = self._settings
        scheme = (
            "with TLS" + (" (mutual)" if self._tls and self._tls.mutual else "")
            if self._tls
            else "without TLS"
        )
        tokens = ", tokens required" if self._tokens else ""
        if s.grpc_port:
            interceptors = (
                [TokenInterceptor(self._tokens, open_health=s.open_health)] if self._tokens else []
            )
            self._grpc = grpc.aio.server(
                interceptors=interceptors,
                options=[
                    ("grpc.max_receive_message_length", s.max_body_bytes),
                    ("grpc.max_send_message_length", 64 * 1024 * 1024),
                    ("grpc.max_concurrent_streams", s.max_concurrent_streams),
                    # Count open HTTP/2 streams against that limit, as the client does, so
                    # callers beyond it wait at the client. grpc core's default instead
                    # counts stream objects not yet freed, and grpc.aio frees a call only
                    # when the event loop gets to it: streams already answered kept counting,
                    # and callers within the limit got RST_STREAM REFUSED_STREAM.
                    ("grpc.http.overload_protection", 0),
                    ("grpc.server_handshake_timeout_ms", int(s.header_timeout_s * 1000)),
                    ("grpc.keepalive_time_ms", 60_000),
                    ("grpc.keepalive_timeout_ms", 10_000),
                    ("grpc.max_connection_idle_ms", 300_000),
                ],
            )
            add_services(self._grpc, self._calls, self._readiness, self._sensor)
            address = f"{s.host}:{s.grpc_port}"
            if self._tls is not None:
                self._grpc.add_secure_port(address, self._tls.grpc_credentials())
            else:
                self._grpc.add_insecure_port(address)
            await self._grpc.start()
            log.info("gRPC door listening on %s %s%s", address, scheme, tokens)
        if s.http_port:
            app = HttpApp(self._calls, self._readiness, sensor=self._sensor,
                          max_body_bytes=s.max_body_bytes, body_timeout_s=s.body_timeout_s,
                          tokens=self._tokens, open_health=s.open_health,
                          metrics=self._metrics)  # fmt: skip
            tls = self._tls
            config = uvicorn.Config(
                app, host=s.host, port=s.http_port, loop="none",
                http=guarded_http(header_timeout_s=s.header_timeout_s,
                                  max_header_bytes=s.max_header_bytes),
                lifespan="off", access_log=False, log_level="warning",
                timeout_keep_alive=5, timeout_graceful_shutdown=int(_GRACE_S),
                ssl_context_factory=(lambda _c, _d: tls.context) if tls is not None else None,
            )  # fmt: skip
            self._http = _Uvicorn(config)
            self._http_task = asyncio.create_task(self._http.serve())
            while not self._http.started and not self._http_task.done():
                await asyncio.sleep(0.01)
            if self._http_task.done():  # the port was taken, say
                self._http_task.result()
                raise OSError(f"the HTTP door could not listen on {s.host}:{s.http_port}")
            log.info("HTTP door listening on %s:%d %s%s", s.host, s.http_port, scheme, tokens)
        self._watcher.start()

    async def stop(self) -> None:
        """Stop accepting; answer what is in flight (at most a few seconds)."""
        self._watcher.stop()
        if self._http is not None:
            self._http.should_exit = True
            await self._http_task
        if self._grpc is not None:
            await self._grpc.stop(grace=_GRACE_S)


def _only_model(engine: Engine[Any]) -> str | None:
    """With no --default-model, a store of one model serves it to requests naming none."""
    names = engine.models.store.names()
    return names[0] if len(names) == 1 else None


def serve(settings: ServeConfig) -> int:
    """`pipeline serve`: run the doors until SIGTERM or SIGINT; return 0."""
    stats = StatsLine(interval_s=settings.stats_interval_s, kind="doors")
    metrics = PrometheusSensor()
    sensor = Sensors([stats, metrics])
    readiness = Readiness(stale_after_s=ENGINE_STALE_AFTER_S)
    engine = build_engine(settings, sensor, max_queue=settings.max_queue)
    when_idle = settings.dispatch == "when-idle" and not settings.latency_target_ms
    company = Company() if when_idle else None
    runner = EngineLoop(engine, on_turn=readiness.heartbeat, when_idle=when_idle,
                        gather=company.rows_to_gather if company else None)  # fmt: skip
    runner.start()
    log.info("serving with %s", settings.summary)
    readiness.wait_for("models", "the models are loading")
    loaded, failed = warm_up_models(
        engine, default_model=settings.default_model, max_loaded=settings.max_loaded_models
    )
    readiness.done("models")
    unready = unready_reason(loaded, failed, settings.default_model)
    if unready is not None:  # it can answer health and say why, but is not ready
        log.error("not ready: %s", unready)
        readiness.wait_for("models", unready)
    doors = Doors(settings, engine, readiness, sensor, default_model=settings.default_model,
                  metrics=metrics, when_idle=when_idle, company=company)  # fmt: skip

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        if early := early_stop():
            log.info("received %s while starting: stopping", early.name)
            stop.set()
        await doors.start()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.stats_interval_s)
            if stats.due():
                log.info("%s", stats.snapshot().line())
        log.info("stopping: answering the requests in flight")
        readiness.wait_for("stopping", "the server is stopping")
        await doors.stop()

    try:
        uvloop.run(main())
    finally:
        runner.stop()
    log.info("stopped")
    return 0


class DoorsThread(threading.Thread):
    """The doors on a thread of their own, beside a Kafka worker on the main thread."""

    def __init__(self, doors: Doors) -> None:
        super().__init__(name="doors", daemon=True)
        self._doors = doors
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            try:
                await self._doors.start()
            finally:
                self._started.set()
            await self._stopping.wait()
            await self._doors.stop()

        try:
            uvloop.run(main())
        except BaseException as exc:  # reported by start_and_wait on the main thread
            self._error = exc
            self._started.set()

    def start_and_wait(self) -> None:
        """Start the doors; raise what kept them from opening."""
        self.start()
        self._started.wait()
        if self._error is not None:
            raise self._error

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the doors (answering what is in flight) and wait for the thread."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self.join(timeout_s)

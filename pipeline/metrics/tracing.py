"""Trace context across the hop through Kafka, and optional OpenTelemetry spans.

Every prediction carries its input's W3C ``traceparent`` and ``tracestate`` headers (dead
letters keep all the input's headers anyway), so a trace continues downstream. With the
OpenTelemetry SDK installed (the ``[otel]`` extra) and tracing configured through the
standard variables (``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_SERVICE_NAME`` ...), the worker also records one span per batch of predictions,
linked to every input's context; without them nothing is recorded or exported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

__all__ = ["TRACE_HEADERS", "BatchTracer", "batch_tracer", "trace_headers"]

log = logging.getLogger("pipeline.tracing")
TRACE_HEADERS = ("traceparent", "tracestate")

Headers = list[tuple[str, bytes | None]]


def trace_headers(headers: Headers | None) -> Headers:
    """The W3C trace-context headers among a record's headers, in order."""
    if not headers:
        return []
    return [(k, v) for k, v in headers if k in TRACE_HEADERS]


class BatchTracer:
    """Records one span per batch of predictions, linked to its inputs' trace contexts."""

    def __init__(self, tracer: Any) -> None:
        from opentelemetry.trace import Link, NonRecordingSpan
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = tracer
        self._propagator = TraceContextTextMapPropagator()
        self._link = Link
        self._non_recording = NonRecordingSpan

    def batch(self, model: str, version: str, contexts: Sequence[Headers]) -> None:
        """Record the span of one batch whose inputs carried `contexts` (their trace headers)."""
        links = []
        for headers in contexts:
            carrier = {k: (v or b"").decode("latin-1") for k, v in headers}
            if "traceparent" not in carrier:
                continue
            parent = self._propagator.extract(carrier)
            for span in parent.values():
                if isinstance(span, self._non_recording):
                    links.append(self._link(span.get_span_context()))
        attributes = {"model": model, "version": version, "rows": len(contexts)}
        with self._tracer.start_as_current_span("pipeline.predict", links=links,
                                                attributes=attributes):  # fmt: skip
            pass


def batch_tracer() -> BatchTracer | None:
    """A tracer when OpenTelemetry is installed and tracing is configured, else None.

    An application (or a test) that set its own tracer provider gets spans through it;
    otherwise ``OTEL_TRACES_EXPORTER`` (``otlp`` or ``console``) sets one up.
    """
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    if type(provider).__name__ in ("ProxyTracerProvider", "NoOpTracerProvider"):
        exporter = os.environ.get("OTEL_TRACES_EXPORTER", "")
        if not exporter and not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            return None
        if exporter == "none" or not _configure(exporter or "otlp"):
            return None
    return BatchTracer(trace.get_tracer("pipeline"))


def _configure(exporter: str) -> bool:
    """Set up the SDK's tracer provider with `exporter`; False (logged) if it cannot be."""
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        log.warning("OTEL_* is set but the OpenTelemetry SDK is missing: "
                    "pip install '.[otel]' in the project's checkout")  # fmt: skip
        return False
    if exporter == "console":
        span_exporter: Any = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("OTEL_TRACES_EXPORTER=%s needs opentelemetry-exporter-otlp-proto-http; "
                        "no spans are exported", exporter)  # fmt: skip
            return False
        span_exporter = OTLPSpanExporter()
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "pipeline")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    return True

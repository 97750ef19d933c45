"""`make picture`: docs/monitoring.png, the dashboard's expressions over a real run.

Starts a real broker (or uses ``--bootstrap-servers``), a worker with ``--metrics-port``
on a copy of the example models, a real Prometheus with deploy/'s config scraping it
every second, and `pipeline produce` for the load: two models at a steady rate, version 2
of one rolled out mid-run through its PINNED file, a burst that builds up lag, and a few
bad events every few seconds. Then headless Chromium takes a picture of Prometheus's graph
page showing five of the Grafana dashboard's own expressions over the run, and everything
started is stopped.

    python -m pipeline.dev.monitorshot [--out docs/monitoring.png] [--bootstrap-servers B]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from confluent_kafka import Producer

from pipeline.dev.localkafka import LocalKafka
from pipeline.dev.localserver import free_port
from pipeline.dev.prometheus import LocalPrometheus, local_config
from pipeline.errors import PipelineError

__all__ = ["main"]

_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = _ROOT / "deploy" / "grafana" / "dashboards" / "pipeline.json"
MLP, LOGREG = "breast-cancer-mlp", "breast-cancer-logreg"
# (panel title, refId, $model): the dashboard's expressions the picture shows, one graph
# each; the first shows the MLP alone, whose version 2 is rolled out mid-run.
PANELS = (
    ("Throughput", "B", MLP),
    ("Event to prediction latency", "C", ".*"),
    ("Consumer lag by partition", "A", ".*"),
    ("Dead letters by stage and error type", "A", ".*"),
    ("Batch size", "A", ".*"),
)
RATE_WINDOW = "10s"  # $__rate_interval for a 1 s scrape interval
# (every so many seconds, value): bad events, at rates apart so their lines are too
BAD_EVENTS = (
    (1, b'{"id": "shot-bad-json", "features": [1, 2'),
    (2, b'{"id": "shot-bad-count", "features": [1.0, 2.0]}'),
    (5, b'{"id": "shot-bad-model", "model": "no-such-model", "features": [1.0]}'),
)
# seconds after the load starts: what happens
STEADY_S, ROLLOUT_S, BURST_S, END_S = 0, 60, 100, 190
STEADY_RATES = {MLP: 800, LOGREG: 300}
BURST_MODEL, BURST_EVENTS = LOGREG, 300_000


def _say(text: str) -> None:
    print(f"monitorshot | {text}", flush=True)


def _expressions() -> list[str]:
    """The PANELS' expressions, with Grafana's variables filled in for Prometheus."""
    dashboard = json.loads(DASHBOARD.read_text())
    by_key = {(p["title"], t["refId"]): t["expr"] for p in dashboard["panels"]
              for t in p.get("targets", [])}  # fmt: skip
    return [
        by_key[(title, ref)]
        .replace("$__rate_interval", RATE_WINDOW)
        .replace('"$model"', f'"{model}"')
        .replace('"$version"', '".*"')
        for title, ref, model in PANELS
    ]


@contextlib.contextmanager
def _broker(bootstrap: str | None, data_dir: Path) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    broker = LocalKafka(data_dir=data_dir)
    info, _ = broker.start(port=free_port())
    try:
        yield info.bootstrap
    finally:
        broker.stop()


def _model_store(path: Path) -> Path:
    """The example models, with version 2 of the MLP (a copy of 1), pinned to 1 for now."""
    for name in (MLP, LOGREG):
        shutil.copytree(_ROOT / "models" / name, path / name)
    shutil.copytree(path / MLP / "1", path / MLP / "2")
    (path / MLP / "2" / "model.json").unlink()  # its checksum names version 1's file
    (path / MLP / "PINNED").write_text("1\n")
    return path


@contextlib.contextmanager
def _process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m pipeline ...`, its output in `log`; SIGTERM on the way out."""
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", *argv], stdout=out,
                                stderr=subprocess.STDOUT, cwd=_ROOT)  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(port: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise PipelineError(f"the worker was not ready on port {port} within {timeout_s:.0f} s")


def _produce(bootstrap: str, topic: str, model: str, count: int, rate: int | None) -> list[str]:
    argv = ["produce", "--bootstrap-servers", bootstrap, "--topic", topic,
            "--synthetic", model, "--count", str(count)]  # fmt: skip
    return [*argv, "--rate", str(rate)] if rate else argv


def _load(bootstrap: str, topic: str, store: Path, logs: Path) -> None:
    """The run's events, on the schedule of the module constants."""
    bad = Producer({"bootstrap.servers": bootstrap})
    start = time.monotonic()
    steady_s = END_S - STEADY_S - 10
    with contextlib.ExitStack() as stack:
        for model, rate in STEADY_RATES.items():
            argv = _produce(bootstrap, topic, model, rate * steady_s, rate)
            stack.enter_context(_process(argv, logs / f"produce-{model}.log"))
        _say(f"steady load: {STEADY_RATES} events/s for {steady_s} s")
        rolled_out = burst = False
        while (elapsed := time.monotonic() - start) < END_S:
            if not rolled_out and elapsed >= ROLLOUT_S:
                (store / MLP / "PINNED").write_text("2\n")
                rolled_out = True
                _say(f"rolled {MLP} out to version 2")
            if not burst and elapsed >= BURST_S:
                argv = _produce(bootstrap, topic, BURST_MODEL, BURST_EVENTS, None)
                stack.enter_context(_process(argv, logs / "produce-burst.log"))
                burst = True
                _say(f"burst: {BURST_EVENTS:,} {BURST_MODEL} events as fast as it goes")
            for every_s, value in BAD_EVENTS:
                if int(elapsed) % every_s == 0:
                    bad.produce(topic, value, b"bad")
            bad.poll(0)
            time.sleep(1.0 - (time.monotonic() - start) % 1.0)
    bad.flush(30)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    raise PipelineError("no Chromium to take the picture with: `apt-get install chromium`")


def _picture(prometheus: LocalPrometheus, range_s: int, out: Path) -> None:
    """Prometheus's graph page with one graph per expression, over the last `range_s`."""
    options = [
        f"g{i}.expr={quote(expr, safe='')}&g{i}.tab=0&g{i}.range_input={range_s}s"
        for i, expr in enumerate(_expressions())
    ]
    url = f"{prometheus.url}/classic/graph?{'&'.join(options)}"
    # Taller than the page, so the browser never scrolls to the focused last expression;
    # the blank below the page is cut off afterwards.
    height = 800 * len(PANELS)
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--window-size=1400,{height}", "--virtual-time-budget=20000",
         f"--screenshot={out.resolve()}", url],
        check=True, timeout=180, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _trim_bottom(out)


def _trim_bottom(path: Path, margin: int = 16) -> None:
    """Cut the blank rows below the page off the picture at `path`, in 256 colours."""
    from PIL import Image, ImageChops  # the [bench] extra's, as for the benchmark's plots

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    blank = Image.new("RGB", rgb.size, rgb.getpixel((rgb.width - 1, rgb.height - 1)))
    box = ImageChops.difference(rgb, blank).getbbox()
    if box is not None:
        rgb = rgb.crop((0, 0, rgb.width, min(rgb.height, box[3] + margin)))
    rgb.quantize(colors=256).save(path, optimize=True)  # a third of the bytes, same look


def _totals(prometheus: LocalPrometheus) -> dict[str, float]:
    wanted = {
        "consumed": "sum(pipeline_records_consumed_total)",
        "predictions": "sum(pipeline_predictions_total)",
        "dead letters": "sum(pipeline_dead_letters_total)",
        "largest lag": "max(max_over_time(sum(pipeline_consumer_lag)[10m:1s]))",
    }
    found = {}
    for name, expr in wanted.items():
        result = prometheus.query(expr)
        found[name] = float(result[0]["value"][1]) if result else 0.0
    return found


def run(out: Path, bootstrap: str | None) -> None:
    """Make the picture at `out`."""
    with tempfile.TemporaryDirectory(prefix="monitorshot-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        servers = stack.enter_context(_broker(bootstrap, work / "kafka"))
        store = _model_store(work / "models")
        run_id = uuid.uuid4().hex[:8]
        topic, metrics_port, prometheus_port = f"shot-{run_id}-features", free_port(), free_port()
        worker = ["run", "--bootstrap-servers", servers, "--input-topic", topic,
                  "--output-topic", f"shot-{run_id}-predictions", "--group-id", f"shot-{run_id}",
                  "--models", str(store), "--default-model", MLP,
                  "--metrics-port", str(metrics_port)]  # fmt: skip
        stack.enter_context(_process(worker, work / "worker.log"))
        _wait_ready(metrics_port)
        _say(f"worker ready on {servers}, /metrics on 127.0.0.1:{metrics_port}")
        config = local_config([f"127.0.0.1:{metrics_port}"], port=prometheus_port,
                              scrape_interval_s=1.0)  # fmt: skip
        prometheus = stack.enter_context(
            LocalPrometheus(config, data_dir=work / "prometheus", port=prometheus_port)
        )
        started = time.monotonic()
        _load(servers, topic, store, work)
        time.sleep(5)  # the last outputs are acknowledged and scraped
        _picture(prometheus, int(time.monotonic() - started) + 15, out)
        _say(f"{out}: {_totals(prometheus)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.dev.monitorshot", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=_ROOT / "docs" / "monitoring.png")
    parser.add_argument("--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
                        help="an existing broker (default: $KAFKA_BOOTSTRAP_SERVERS, else a "
                        "local broker started and stopped here)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        run(args.out, args.bootstrap_servers)
    except PipelineError as exc:
        print(f"monitorshot: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

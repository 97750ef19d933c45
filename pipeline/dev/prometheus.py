"""A real Prometheus server on this machine, scraping local workers with deploy/'s config.

The dashboard test and the monitoring picture both need what docker-compose runs, without
Docker: Debian's ``prometheus`` binary, deploy/prometheus/prometheus.yml with its worker
job pointed at local ports instead of the compose service's DNS name, and a way to ask it
a PromQL question. Everything listens on 127.0.0.1 and is stopped on exit.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml  # type: ignore[import-untyped]  # the [test] extra's PyYAML, no stubs

from pipeline.errors import PipelineError

__all__ = ["DEPLOYED_CONFIG", "LocalPrometheus", "local_config"]

DEPLOYED_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "prometheus.yml"
_READY_TIMEOUT_S = 60.0


def local_config(
    targets: list[str], *, port: int, scrape_interval_s: float, base: Path = DEPLOYED_CONFIG
) -> dict[str, Any]:
    """`base`, with every DNS-discovered job (the workers) scraping `targets`, Prometheus's
    own job scraping 127.0.0.1:`port`, and the jobs of other compose services left out;
    scrapes and rule evaluations every `scrape_interval_s`."""
    config: dict[str, Any] = copy.deepcopy(yaml.safe_load(base.read_text()))
    interval = f"{int(scrape_interval_s * 1000)}ms"
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    jobs = []
    for job in config["scrape_configs"]:
        if job.pop("dns_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": list(targets)}]
        elif _scrapes_itself(job):
            job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
        else:
            continue
        jobs.append(job)
    config["scrape_configs"] = jobs
    return config


def _scrapes_itself(job: dict[str, Any]) -> bool:
    hosts = {
        target.rpartition(":")[0]
        for group in job.get("static_configs", [])
        for target in group["targets"]
    }
    return hosts == {"localhost"}


class LocalPrometheus:
    """``prometheus`` with `config`, its data in `data_dir`, on 127.0.0.1:`port`.

    Raises:
        PipelineError: the binary is missing, or the server is not ready within 60 s.
    """

    def __init__(self, config: dict[str, Any], *, data_dir: Path, port: int) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise PipelineError(
                "prometheus is not installed: `apt-get install prometheus` (Debian's package)"
            )
        data_dir.mkdir(parents=True, exist_ok=True)
        self._config_path = data_dir / "prometheus.yml"
        self._config_path.write_text(yaml.safe_dump(config))
        self._log_path = data_dir / "prometheus.log"
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._command = [
            binary,
            f"--config.file={self._config_path}",
            f"--storage.tsdb.path={data_dir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalPrometheus:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server and wait until it answers ready."""
        with self._log_path.open("ab") as log:
            self._proc = subprocess.Popen(self._command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/-/ready", timeout=2
                ) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        tail = self._log_path.read_text(errors="replace")[-2000:]
        raise PipelineError(f"prometheus did not become ready on {self.url}:\n{tail}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 30 s)."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def api(self, path: str, **params: str | list[str]) -> Any:
        """GET /api/v1/`path`; return its ``data``.

        Raises:
            PipelineError: Prometheus answered an error (a bad expression, say), with its
                message.
        """
        query = urllib.parse.urlencode(params, doseq=True)
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{query}"
        try:
            with urllib.request.urlopen(url, timeout=30) as reply:
                body = json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PipelineError(
                f"prometheus refused {path} {params}: {body.get('errorType')}: {body.get('error')}"
            )
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector `expr` evaluates to now."""
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

"""Prometheus metrics for ``/metrics`` (text exposition format 0.0.4).

- ``pacsbox_http_requests_total{method,route,status}`` and
  ``pacsbox_http_request_duration_seconds{method,route}``: per route template (bounded label
  values), counted by the request-log middleware;
- ``pacsbox_http_instances_stored_total{outcome}``: instances stored through HTTP uploads;
- ``pacsbox_index_{patients,studies,series,instances}`` and ``pacsbox_index_bytes``: what the
  index holds, read from the database at scrape time, so they are right whichever process or
  node stored the instances (C-STORE workers included).

With several HTTP worker processes ``serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` before forking
them, and the exposition merges the per-process files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from pacsbox.archive.index.writer import INSTANCE, PATIENT, SERIES, STUDY


class IndexCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.engine.connect() as conn:
            values = {
                name: conn.execute(select(func.count()).select_from(table)).scalar_one()
                for name, table in (
                    ("patients", PATIENT),
                    ("studies", STUDY),
                    ("series", SERIES),
                    ("instances", INSTANCE),
                )
            }
            size = conn.execute(select(func.coalesce(func.sum(STUDY.c.size_bytes), 0))).scalar_one()
        for name, value in values.items():
            yield GaugeMetricFamily(f"pacsbox_index_{name}", f"{name} in the index", value=value)
        yield GaugeMetricFamily("pacsbox_index_bytes", "bytes of stored instances", value=size)


class Metrics:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "pacsbox_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "pacsbox_http_request_duration_seconds",
            "HTTP request duration",
            ["method", "route"],
            registry=self.registry,
        )
        self.stored = Counter(
            "pacsbox_http_instances_stored",
            "instances stored through HTTP uploads",
            ["outcome"],
            registry=self.registry,
        )
        self.index = IndexCollector(engine)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(seconds)

    def exposition(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = self.registry
        return generate_latest(registry) + generate_latest(_single(self.index))


def _single(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry

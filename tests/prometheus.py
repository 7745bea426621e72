"""Read pwlock's gauges as Prometheus does: from a Ray node's metrics export port."""

from __future__ import annotations

import urllib.request

Metrics = dict[tuple[str, frozenset], float]


def scrape(port: int, host: str = "127.0.0.1") -> Metrics:
    """pwlock's gauges at the port, by (name, labels that are pwlock's own: experiment, state)."""
    from prometheus_client.parser import text_string_to_metric_families

    body = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name.startswith("ray_pwlock_"):
                labels = frozenset((k, v) for k, v in sample.labels.items() if k in ("experiment", "state"))
                out[(sample.name, labels)] = sample.value
    return out


def gauge(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.get((name, frozenset(labels.items())))

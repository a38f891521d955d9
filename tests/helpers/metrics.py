"""Scraping a coordinator's Prometheus endpoint over real HTTP, for assertions."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from fedgrpc.coordinator.services.in_thread import CoordinatorThread


def scrape(coordinator: CoordinatorThread) -> tuple[str, dict[str, float]]:
    """The exposition text, and each sample by `name{label=value,...}`.

    Labels are sorted, so a test can name a sample without knowing the order
    the exporter wrote them in.
    """
    address = coordinator.running.runtime.metrics.address
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = (
                sample.value
            )
    return text, samples

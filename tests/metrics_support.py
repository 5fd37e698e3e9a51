"""Reading a Prometheus scrape in tests: every sample by name and labels, parsed by prometheus_client."""
from __future__ import annotations

import gevent
import requests
from prometheus_client.parser import text_string_to_metric_families


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of a text exposition (strictly parsed)."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(url: str, **kwargs) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = requests.get(url, timeout=10, **kwargs)
    assert reply.status_code == 200, (reply.status_code, reply.text[:500])
    assert reply.headers["Content-Type"].startswith("text/plain; version=")
    return parse(reply.text)


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def wait_scrape(url: str, condition, timeout: float = 15.0, message: str = "", **kwargs) -> dict:
    """Scrape until ``condition(samples)`` holds, within ``timeout``; the samples.

    The numbers of ``--workers`` come in reports once a second from each worker (there is no
    event to wait on across the process boundary), so this re-scrapes, a bounded number of times.
    """
    samples: dict = {}
    with gevent.Timeout(timeout, False):
        while True:
            samples = scrape(url, **kwargs)
            if condition(samples):
                return samples
            gevent.sleep(0.1)  # a scrape is the only way to look; the reports come each second
    raise AssertionError(f"never: {message} (last scrape: {sorted(samples.items())[:80]})")

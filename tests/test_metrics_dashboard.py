"""docs/grafana-dashboard.json queries only series a real scrape has, and queries them sensibly."""
import json
import re
from pathlib import Path

from .metrics_support import scrape

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"
SERIES = re.compile(r"\bgeventcomet_[a-z0-9_]+")


def queries(dashboard: dict) -> list[str]:
    found = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    found += [var["query"] for var in dashboard["templating"]["list"] if var["type"] == "query"]
    return found


def test_every_series_the_dashboard_queries_exists_in_a_real_scrape(server):
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    samples = scrape(server.url + "/metrics")
    scraped = {name for name, _ in samples}
    status_labels = {dict(labels).get("status") for name, labels in samples if name == "geventcomet_refusals_total"}
    asked = {name for query in queries(dashboard) for name in SERIES.findall(query)}
    assert len(asked) >= 15
    assert not asked - scraped, f"the dashboard queries series no scrape has: {sorted(asked - scraped)}"
    assert {"400", "401", "403", "413", "429", "503"} <= status_labels
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for subject in ("fan-out", "waiting", "deliveries", "refusals", "backend latency"):
        assert subject in titles, subject


def test_each_query_is_balanced_and_rates_only_counters():
    for query in queries(json.loads(DASHBOARD.read_text(encoding="utf-8"))):
        assert query.count("(") == query.count(")") and query.count("{") == query.count("}"), query
        for rated in re.findall(r"(?:rate|increase)\((geventcomet_[a-z0-9_]+)", query):
            assert rated.endswith(("_total", "_bucket")), f"rate of a gauge: {query}"
        for quantile in re.findall(r"histogram_quantile\([^,]+, sum by \(le\) \(rate\((\w+)", query):
            assert quantile.endswith("_bucket"), query

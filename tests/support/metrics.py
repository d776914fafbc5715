"""Reading Prometheus text exposition in tests."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str, name: str, **labels: str) -> list[float]:
    """Return the values of ``name`` samples whose labels include ``labels``."""
    found = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found.append(sample.value)
    return found


def total(text: str, name: str, **labels: str) -> float:
    """Return the sum of the ``name`` samples whose labels include ``labels``."""
    return sum(samples(text, name, **labels))

"""Parses a /metrics body (stdin) with prometheus_client, the Prometheus project's own
Python client, and prints every sample as JSON: [{family, type, name, labels, value}].

Usage: promparse.py text|openmetrics. `text` is the Prometheus text format parser;
`openmetrics` the stricter OpenMetrics one (it also wants the closing `# EOF`).
Any line either parser cannot read is an exception, and a non-zero exit."""

import json
import sys

if sys.argv[1] == "openmetrics":
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
else:
    from prometheus_client.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        samples.append(
            {
                "family": family.name,
                "type": family.type,
                "name": s.name,
                "labels": dict(s.labels),
                "value": s.value,
            }
        )
json.dump(samples, sys.stdout)

"""What a run reports to operators' own tools: events, OpenTelemetry, Prometheus, notifications."""

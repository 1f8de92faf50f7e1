"""What a finished run reports to the operators' own tools: Prometheus metrics, notifications."""

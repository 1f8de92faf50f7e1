"""What a finished run reports to the operators' own monitoring (Prometheus)."""

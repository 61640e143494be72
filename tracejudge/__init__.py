"""tracejudge: an OpenTelemetry sidecar that forwards, archives and scores LLM and agent traces."""

__version__ = "0.1.0"

"""Shared kernel: configuration, persistence, events, security and telemetry. Knows no service."""

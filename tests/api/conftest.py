"""Reuse the gateway fixtures: registry rows and the fake upstream."""

from tests.gateway.conftest import served_model, upstream

__all__ = ["served_model", "upstream"]

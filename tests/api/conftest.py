"""Reuse the gateway fixtures: registry rows and the fake upstream."""

from tests.gateway.conftest import _fresh_gateway_state, served_model, upstream

__all__ = ["_fresh_gateway_state", "served_model", "upstream"]

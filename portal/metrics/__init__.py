"""Prometheus metrics of the portal: the instruments the gateway writes and the `/metrics` view."""

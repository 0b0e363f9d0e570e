"""Usage charts and CSV exports, read from the daily rollup (registry.services.rollups)."""

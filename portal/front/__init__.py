"""The front door at `/`: what this portal serves and where to go from there."""

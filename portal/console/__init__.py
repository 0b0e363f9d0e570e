"""Additions to the admin console: the live fleet dashboard, worker controls and usage views."""

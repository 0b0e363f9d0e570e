"""Admin for the registry; each app area adds its own ModelAdmin classes here."""

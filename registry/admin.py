"""Admin for the registry; each app area adds its own ModelAdmin classes here."""

import registry.admin_credentials  # noqa: F401 - registers AppCredential

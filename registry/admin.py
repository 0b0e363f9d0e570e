"""Admin for the registry; each app area adds its own ModelAdmin classes here."""

import registry.admin_credentials  # registers AppCredential
import registry.admin_keys  # registers ApiKey and UsageRecord
import registry.admin_usage  # registers UsageRollupDay
import registry.admin_workers  # noqa: F401 - registers Worker, ServedModel and aliases

"""The gateway: everything that sends a request to a worker goes through `portal.gateway.relay`."""

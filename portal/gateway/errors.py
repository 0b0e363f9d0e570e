"""GatewayError: a failure to report to the client, in OpenAI's error shape."""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """A failure to report to the client: OpenAI-shaped fields plus the HTTP status.

    `fault` is set on errors made from a worker's answer, for failover to read:
    "client" (the request is at fault), "busy" (the worker is full), "worker"
    (its own failure), "misrouted" (it does not serve the model) or
    "credentials" (it refused the portal's token: another worker may not).
    """

    fault: str = ""

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 400,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def to_openai(self) -> dict[str, Any]:
        """The body OpenAI clients parse: {"error": {"message", "type", "param", "code"}}."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def __repr__(self) -> str:
        return f"GatewayError({self.status_code}, {self.message!r})"


def invalid(message: str, *, param: str | None, code: str | None = None) -> GatewayError:
    """A 400 naming the field at fault."""
    return GatewayError(message, status_code=400, param=param, code=code)


def model_not_found(name: str) -> GatewayError:
    return GatewayError(
        f"The model '{name}' does not exist or is not served here.",
        status_code=404,
        param="model",
        code="model_not_found",
    )


def not_allowed(name: str) -> GatewayError:
    """The caller may not use the model it named (an API key's allowed models)."""
    return GatewayError(
        f"This API key may not use the model '{name}'.",
        status_code=403,
        error_type="permission_error",
        param="model",
        code="forbidden",
    )


def no_worker(message: str, *, retry_after: int = 2) -> GatewayError:
    return GatewayError(
        message,
        status_code=503,
        error_type="overloaded_error",
        code="no_worker_available",
        retry_after=retry_after,
    )


def credentials_refused() -> GatewayError:
    """A worker answered 401 or 403 to the portal: the portal's token, never the client's key."""
    error = no_worker("No worker could serve this request: a worker refused the portal's credentials.")
    error.fault = "credentials"
    return error


def worker_timeout(seconds: float) -> GatewayError:
    return GatewayError(
        f"The worker did not answer within {seconds:g} s.",
        status_code=504,
        error_type="timeout_error",
        code="worker_timeout",
    )


def worker_failed(detail: str) -> GatewayError:
    return GatewayError(
        f"The worker failed: {detail}", status_code=502, error_type="server_error", code="worker_error"
    )

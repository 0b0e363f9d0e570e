"""Errors an engine raises; the worker's HTTP app maps each to a status code."""


class EngineError(Exception):
    """Base class for every engine failure."""

    status_code = 500
    error_type = "server_error"


class InvalidRequest(EngineError):
    """The request cannot be served as given; `field` names the culprit."""

    status_code = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class RequestFailed(InvalidRequest):
    """The model failed on this request alone (input the checks did not catch); the others go on."""

    code = "request_failed"


class PromptTooLong(InvalidRequest):
    def __init__(
        self, prompt_tokens: int, max_tokens: int, max_model_len: int, field: str = "messages"
    ) -> None:
        super().__init__(
            f"This model's maximum context length is {max_model_len} tokens; the prompt has "
            f"{prompt_tokens} tokens and max_tokens asks for {max_tokens} more.",
            field=field,
        )
        self.prompt_tokens = prompt_tokens


class QueueFull(EngineError):
    """More requests are waiting than `--max-queue` allows; answered at once."""

    status_code = 503
    error_type = "overloaded_error"


class QueueTimeout(EngineError):
    """A request waited longer than `--queue-timeout` for a slot."""

    status_code = 503
    error_type = "overloaded_error"


class WrongTask(InvalidRequest):
    """Generation asked of an embedding model, or the reverse."""


class ModelLoadError(EngineError):
    """The model could not be found or loaded; the message is one line for the operator."""


class HandoffRefused(EngineError):
    """A prefill/decode hand-off this engine cannot make or use; the decode worker then prefills itself."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "handoff_refused"

"""What a finished request's HTTP status says about the portal: one word, the same on every page.

Only `server_error` counts against a model's error rate: a 5xx the portal
answered (a worker's fault, no worker, a timeout). A client's mistake (4xx),
a caller's limit (429) and a client that went away (499) are counted apart:
they say nothing about whether the model is serving.
"""

from __future__ import annotations

OK = "ok"
SERVER_ERROR = "server_error"
CLIENT_ERROR = "client_error"
LIMITED = "limited"
CANCELLED = "cancelled"
OUTCOMES = (OK, SERVER_ERROR, CLIENT_ERROR, LIMITED, CANCELLED)


def outcome(status_code: int) -> str:
    """The outcome of a request answered with `status_code` (499: the client went away)."""
    if status_code == 499:
        return CANCELLED
    if status_code == 429:
        return LIMITED
    if status_code >= 500:
        return SERVER_ERROR
    if status_code >= 400:
        return CLIENT_ERROR
    return OK

"""schemathesis hooks for the `--checks all` run of test_schema_fuzz.py (loaded through SCHEMATHESIS_HOOKS).

A body that names a well-formed model is sent for a served one, so that it
reaches a worker rather than stopping at a 404: replacing one schema-valid
name by another leaves a valid body valid and an invalid one invalid.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import schemathesis

from portal.signed.client import sign_body

SERVED = {"/v1/embeddings": "embedder"}  # every other /v1 operation: the canned chat worker
MODEL_NAME = re.compile(r"^(?! *$)[^\x00-\x1f\x7f-\x9f]{1,200}$")


# The signed API: an app the test registers (SIGNED_APP_ID, SIGNED_APP_SECRET in the environment).
APP_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    body = case.body
    if not isinstance(body, dict):
        return
    if case.path.startswith("/v1/"):
        model = body.get("model")
        if isinstance(model, str) and MODEL_NAME.match(model):
            body["model"] = SERVED.get(case.path, "canned")
    elif case.path != "/api/schema/" and os.environ.get("SIGNED_APP_ID"):
        sign(body)


def sign(body: dict[str, Any]) -> None:
    """Sign as the registered app, replacing only values the schema accepts (a refused one stays refused)."""
    if isinstance(body.get("appId"), str) and APP_ID.match(body["appId"]):
        body["appId"] = os.environ["SIGNED_APP_ID"]
    if isinstance(body.get("timestamp"), int) and not isinstance(body["timestamp"], bool):
        body["timestamp"] = int(time.time())
    if body.get("signType") in ("SHA256", "SM2", "plain") and isinstance(body.get("signData", ""), str):
        body.update(sign_body(body, secret=os.environ["SIGNED_APP_SECRET"]))


# Schema-valid bodies that the server refuses, with a 400 that names the reason, for a rule the
# schema does not state: rules across fields and inside strings (listed in each operation's
# description), and what the canned worker cannot do.
UNSTATED_RULES = re.compile(
    "|".join(
        [
            r"needs '(tools|logprobs)'",
            r"applies to beam search only",
            r"does not apply to beam search",
            r"cannot be combined with",
            r"both constrain the answer; send one",
            r"'best_of' must be at least n",
            r"'stream' cannot be used with best_of above n",
            r"which is not in 'tools'",
            r"names a function twice",
            r"must set one of json, regex, choice, grammar, json_object",
            r"'max_tokens' may be 0 only with 'echo'",
            r"'max_tokens' 0 cannot be combined with",
            r"\.function\.arguments' must be a JSON object",
            r"The canned engine does not",  # structured output, logprobs: a fake with no distribution
            r"maximum context length",  # max_tokens beyond the served model's context
            r"this worker runs and queues at most",  # prompts x n beyond what the worker holds at once
        ]
    )
)


@schemathesis.hook
def filter_failure(ctx: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keep every failure but a schema-valid body refused for one of UNSTATED_RULES."""
    if type(failure).__name__ != "RejectedPositiveData" or response.status_code != 400:
        return True
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return True
    return not UNSTATED_RULES.search(message)


@schemathesis.check
def envelope_code(ctx: Any, response: Any, case: Any) -> bool | None:
    """The signed API's reply: `success` exactly when `code` is 0, and a body the schema refuses is refused.

    Its refusals are HTTP 200 with a non-zero code (go-infer's convention), so
    this is the negative-data check of those operations.
    """
    if not case.path.startswith("/api/") or case.path == "/api/schema/" or response.status_code != 200:
        return None
    reply = response.json()
    assert reply["success"] is (reply["code"] == 0), f"success {reply['success']} with code {reply['code']}"
    if case.meta is not None and case.meta.generation.mode.is_negative:
        assert reply["code"] != 0, "a body the schema refuses was accepted (code 0)"
    return None

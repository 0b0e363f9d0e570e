"""The endpoint `POST /api/<pipeline>`; the work is in `portal.signed.service`.

A DRF APIView, so that drf-spectacular documents it (`portal.signed.schema`),
with its own async `dispatch`, as the `/v1` views have: DRF's would run
`initial()` through Django's single sync thread and answer its errors in its
own shape, where every answer here is the go-infer envelope, HTTP 200.

`authentication_classes` are the signature policies this endpoint accepts:
the service picks the request's signType among them and refuses any other
(9803). The app's pipeline allow list and limits are checked by the service
too, once the body is parsed: they need its appId and the pipeline's
parameters, so the DRF permission and throttle lists stay empty.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponseNotAllowed, JsonResponse
from django.http.response import HttpResponseBase
from rest_framework.views import APIView

from portal.signed.policies import PlainSignature, Sha256Signature, Sm2Signature, signature_policies
from portal.signed.schema import SignedPipelineSchema
from portal.signed.service import handle_signed_request


class SignedView(APIView):
    """Answer a go-infer style signed request; always HTTP 200 with a code, like go-infer."""

    authentication_classes = [Sha256Signature, Sm2Signature, PlainSignature]
    permission_classes = []
    throttle_classes = []
    schema = SignedPipelineSchema()
    # The pipeline one documented operation describes; set by the schema's hook, not by requests.
    documented_pipeline = ""

    async def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:  # type: ignore[override]
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        return await self.post(request, kwargs["pipeline"])

    async def post(self, request: HttpRequest, pipeline: str) -> HttpResponseBase:
        # One byte past the cap is enough to refuse an oversized body without copying all of it.
        body = request.read(int(settings.SIGNED_MAX_BODY_BYTES) + 1)
        policies = signature_policies(self.get_authenticators())
        reply = await handle_signed_request(
            body=body, content_type=request.content_type or "", path=pipeline, policies=policies
        )
        return JsonResponse(reply, json_dumps_params={"ensure_ascii": False})

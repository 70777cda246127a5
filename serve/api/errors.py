"""Errors of the HTTP API: OpenAI's `{"error": {"message", "type", "code"}}`, and on text-embeddings-inference's
routes TEI's own `{"error": message, "error_type": type}` (what TEI clients read)."""

from __future__ import annotations

import json

from starlette.responses import Response

# HTTP status -> OpenAI-style error type
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error", 503: "service_unavailable", 504: "timeout"}

# the routes tagged "tei" answer errors in TEI's shape (serve/api/app.py); HTTP status -> TEI's error_type
TEI_ERROR_TYPES = {401: "Unauthorized", 429: "Overloaded", 503: "Unhealthy"}  # any other 4xx: Validation


class APIError(Exception):
    """A request the API answers with `status` and a message that says what to do."""

    def __init__(self, status: int, message: str, code: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def error_response(status: int, message: str, code: str, headers: dict[str, str] | None = None,
                   tei: bool = False) -> Response:
    """The error body: TEI's shape on TEI's routes (`tei`), OpenAI's elsewhere."""
    if tei:
        body: dict = {"error": message, "error_type": TEI_ERROR_TYPES.get(status, "Validation")}
    else:
        body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "code": code}}
    return Response(json.dumps(body), status_code=status, media_type="application/json", headers=headers)


def from_serving_error(error: Exception) -> APIError:
    """Map a gRPC answer from Triton (serve.client.ServingError) to an HTTP status."""
    status = str(getattr(error, "status", "") or "")
    message = str(error)
    if "INVALID_ARGUMENT" in status:
        if "longer than the model's maximum" in message:  # truncation="error" (TEI's truncate=false)
            return APIError(413, message, "input_too_long")
        return APIError(400, message, "invalid_input")
    if "NOT_FOUND" in status:
        return APIError(404, message, "model_not_found")
    if "DEADLINE_EXCEEDED" in status:
        return APIError(503, f"Triton did not answer in time ({message}); retry later", "timeout",
                        {"Retry-After": "1"})
    if "UNAVAILABLE" in status:
        return APIError(503, f"Triton is unavailable ({message}); retry once it is back", "triton_unavailable",
                        {"Retry-After": "1"})
    # INTERNAL and the like: the server's fault, not the input's; says so and which model failed
    return APIError(503, f"Triton failed to answer: {message}", "triton_error", {"Retry-After": "1"})

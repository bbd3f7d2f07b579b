"""aiohttp's server with the contract's error format even for what its HTTP parser refuses.

A request that the parser refuses (a bad request line, raw non-ASCII bytes,
Transfer-Encoding with Content-Length, a line over the size limit) never reaches the
application or its middlewares: aiohttp answers it from `RequestHandler.handle_error`,
in text/plain, and logs a traceback. aiohttp has no setting for that answer (issues
aio-libs/aiohttp#3287, #9882), so the connection handler is subclassed here, and
`Runner` is the AppRunner that uses it; `xcloud serve` and the tests both run the app
through it.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from service import metrics
from service.api.errors import ApiError
from service.error_codes import ErrorCode

log = logging.getLogger("xcloud.api")

# Contract section 8: 100 ids of the longest form fit in one request line.
MAX_LINE_BYTES = 16 * 1024
HANDLER_ARGS: dict[str, Any] = {
    "max_line_size": MAX_LINE_BYTES,
    "max_field_size": MAX_LINE_BYTES,
    # After an answer that left the body unread, wait at most 1 s (not aiohttp's 10)
    # for the rest before closing: a trickling body must not hold the connection.
    "lingering_time": 1.0,
}


class _JsonErrorHandler(RequestHandler):
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # an answer has begun: nothing more to say
            return super().handle_error(request, status, exc, message)
        # The parser got no usable headers, so there is no client request id to keep.
        rid = uuid.uuid4().hex
        if status < 500:
            log.warning(
                "request refused by the HTTP parser",
                extra={
                    "request_id": rid,
                    "remote": request.remote,
                    "error": type(exc).__name__ if exc is not None else None,
                    # aiohttp's message may quote the raw line: a short prefix only
                    "detail": (message or "")[:160],
                },
            )
            error = ApiError(ErrorCode.BAD_REQUEST, _explain(exc))
        else:  # a failure outside the app's middlewares: unexpected, so the traceback
            log.error("unexpected error", exc_info=exc, extra={"request_id": rid})
            error = ApiError(ErrorCode.INTERNAL_ERROR, "Unexpected error", requestId=rid)
        metrics.REQUESTS.labels("OTHER", "unparsed", error.status).inc()
        response = error.response()
        response.headers["X-Request-Id"] = rid
        response.force_close()  # the parser's state after a refusal is not worth trusting
        return response


def _explain(exc: BaseException | None) -> str:
    if isinstance(exc, LineTooLong):
        return f"The request line or a header is longer than {MAX_LINE_BYTES} bytes"
    if isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message:
        return "Too many headers"
    return "The request is not valid HTTP/1.1"


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """web.AppRunner whose connections answer parser errors in the contract's format."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _Server(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )

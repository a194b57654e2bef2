"""A request's body as the ingress reads it: its pieces as they arrive, the multipart form, and the
body's description in the OpenAPI document."""

from fastapi import Request
from ray.exceptions import RayError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .limits import PARAMETERS, ClientGone, RequestError

BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["image"],
                "properties": {"image": {"type": "string", "format": "binary"},
                               **{name: {"type": "string"} for name in PARAMETERS}},
            }},
        },
    },
    "responses": {"200": {"description": "the upscaled image",
                          "content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}},
}


async def parse_multipart(request: Request, body: bytes) -> tuple[bytes, dict[str, str]]:
    """The one file part and the text fields of a multipart body already read under the byte limit."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=len(PARAMETERS))
    except HTTPException as err:  # starlette's own limits and malformed bodies
        raise RequestError(f"malformed multipart body ({err.detail})") from None
    try:
        files = [value for value in form.values() if isinstance(value, UploadFile)]
        if not files:
            raise RequestError("multipart body has no file part (send the image as a file field 'image')")
        data = await files[0].read()
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        return data, fields
    finally:
        await form.close()


async def body_chunks(request: Request):
    """The body's pieces; a client that hangs up is a :class:`ClientGone`, not a traceback (Ray says
    so with a disconnect message, or by failing the proxy call that fetches the next piece)."""
    try:
        async for chunk in request.stream():
            yield chunk
    except (ClientDisconnect, RayError):
        raise ClientGone("the client closed the connection before its body arrived") from None

"""The baselines for serve_load: the daemon's HTTP stack with an endpoint that does no work.

`app` is the stack exactly as the daemon uses it: uvicorn, Starlette's router, and an endpoint that is a
plain ASGI app (as aeguard.serve.app's Endpoint is). `starlette_app` has a conventional Starlette function
endpoint instead (Request in, JSONResponse out): the lighter-looking code costs more per request, and it
was the baseline before the daemon's endpoints became plain ASGI apps.
"""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

PATH = "/v2/models/{name}/infer"
REPLY = b'{"ok":true}'


class Nothing:
    """Receives the same bytes the real endpoint receives and answers a fixed small JSON body."""

    async def __call__(self, scope, receive, send) -> None:
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(REPLY))],
            }
        )
        await send({"type": "http.response.body", "body": REPLY})


async def nothing(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"ok": True})


app = Starlette(routes=[Route(PATH, Nothing(), methods=["POST"])])
starlette_app = Starlette(routes=[Route(PATH, nothing, methods=["POST"])])

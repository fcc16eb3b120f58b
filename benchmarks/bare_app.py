"""The baseline for serve_load: the daemon's HTTP stack (Starlette on uvicorn) with an endpoint that does no work."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def nothing(request: Request) -> JSONResponse:
    await request.body()  # receive the same bytes the real endpoint receives
    return JSONResponse({"ok": True})


app = Starlette(routes=[Route("/v2/models/{name}/infer", nothing, methods=["POST"])])

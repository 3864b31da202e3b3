"""The stack's Prefect server: Prefect's own app, served by uvicorn behind a Host check.

`prefect server start` runs ``create_app`` under uvicorn; this does the same with one
addition Prefect has no setting for: Starlette's ``TrustedHostMiddleware``, which refuses
a request whose Host header is not this server's address (400), so a web page on another
origin cannot reach the API through DNS rebinding. Authentication
(``PREFECT_SERVER_API_AUTH_STRING``) and CORS (``PREFECT_SERVER_CORS_ALLOWED_ORIGINS``)
are Prefect's own settings, given by the stack's environment (infra/services.py).

Usage: ``python -m infra.prefect_server --host 127.0.0.1 --port 4200``
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True, help="Address to bind and the only Host.")
    parser.add_argument("--port", type=int, required=True, help="Port to bind.")
    args = parser.parse_args(argv)

    import uvicorn
    from prefect.server.api.server import create_app
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    app = create_app(final=True, webserver_only=False)
    guarded = TrustedHostMiddleware(app, allowed_hosts=sorted({args.host, "localhost"}))
    # asyncio and h11, as Prefect's own `server start` runs where uvloop is not installed.
    uvicorn.run(
        guarded,
        host=args.host,
        port=args.port,
        timeout_keep_alive=5,
        log_level="info",
        loop="asyncio",
        http="h11",
    )


if __name__ == "__main__":
    main()

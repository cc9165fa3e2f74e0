"""The API as an ASGI application, for ASGI servers other than `llmq api`, e.g.
`gunicorn -k uvicorn.workers.UvicornWorker api.asgi:app` (run from the repository root).

The code lives in the `llmq` package (llmq/api/: the app factory, routes, auth, schemas);
this folder only points at it, so that there is one import root.
"""

from llmq.api.app import create_app

app = create_app()

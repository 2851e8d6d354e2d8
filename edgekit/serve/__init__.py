"""`edgekit serve`: a device-side daemon with an OpenAI-compatible HTTP API over one warm Runtime.

``build_app(Service(Runtime(...)))`` gives the ASGI app (FastAPI); :mod:`edgekit.serve.daemon`
loads a model or a plan, binds (127.0.0.1 by default) and drains on SIGTERM. Needs the ``serve``
extra: ``pip install 'edgekit[serve]'``.
"""

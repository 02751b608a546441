"""The broker's wire schema: every request and response body of the HTTP API, once.

Four hand-written copies of these shapes (the server's parsing, the server's views, the
SDK's models and the OpenAPI document) used to drift apart. Now:

* :mod:`tether.wire.models` defines each body once, as a strict pydantic model (no
  coercion, unknown fields forbidden, bounds and enums declared);
* the server parses request bodies with them (:func:`tether.wire.validate.parse`, after
  the strict JSON decoder of ``server/parsing.py`` refused duplicate keys and NaN) and
  renders responses through them;
* ``/openapi.json`` is generated from them (``server/openapi.py``), for every route;
* the SDK's wire records (``tether/sdk/_wire.py``) are *generated* from them by
  ``python -m tether.wire.codegen`` (:mod:`tether.wire.codegen`), as plain dataclasses.

Why generated rather than imported: the client installs with httpx and cryptography
only, so it cannot import pydantic (or anything of the broker). The generated file is
checked in, and a test fails when it differs from what the models generate, so the
client can never drift from the server silently. See ``docs/architecture.md``.
"""

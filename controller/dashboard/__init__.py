"""The live dashboard served by the controller (``GET /dashboard``; see :mod:`.routes`).

Owns the page (``static/``), its one JSON feed ``GET /v1/dashboard``, the fetch log written by
``POST /v1/demand`` and the plan log written by :class:`.routes.PlanWatcher`.
"""

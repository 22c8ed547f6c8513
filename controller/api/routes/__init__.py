"""Routers of the controller API, one module per resource."""

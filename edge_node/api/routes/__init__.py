"""Routers of the edge node, one module per resource."""

"""Prometheus metrics of one controller app, in a registry of its own (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "controller_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "controller_http_request_seconds", "HTTP request latency", ["route"], registry=r
        )
        self.heartbeats = Counter("controller_heartbeats", "Node heartbeats received", registry=r)
        self.plans = Counter("controller_plans", "Planning attempts", ["outcome"], registry=r)
        self.pushes = Counter(
            "controller_plan_pushes", "Plan pushes to nodes", ["status"], registry=r
        )
        self.routes = Counter("controller_routes", "Routes answered", registry=r)
        self.demand = Counter(
            "controller_demand_reports", "Demand reports", ["outcome"], registry=r
        )
        self.indexed = Counter(
            "controller_models_indexed", "Models indexed", ["outcome"], registry=r
        )
        self.live_nodes = Gauge("controller_live_nodes", "Live edge nodes", registry=r)
        self.placement_version = Gauge(
            "controller_placement_version", "Current placement version", registry=r
        )
        self.expected_hit_ratio = Gauge(
            "controller_expected_hit_ratio", "Hit ratio of the current placement", registry=r
        )
        self.state_errors = Counter(
            "controller_state_unavailable",
            "Requests that failed because Redis was down",
            registry=r,
        )

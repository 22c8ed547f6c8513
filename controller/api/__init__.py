"""The controller's HTTP layer: thin routes over :mod:`controller.state` and the planner."""

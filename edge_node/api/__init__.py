"""HTTP layer of the edge node: dependencies, request schemas and thin routes."""

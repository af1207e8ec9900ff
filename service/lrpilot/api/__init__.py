"""The HTTP layer: routes, request and response shapes, authentication, the edge's limits."""

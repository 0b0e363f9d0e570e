"""`GET /health`: whether this portal can reach its database and Redis, for load balancers and probes."""

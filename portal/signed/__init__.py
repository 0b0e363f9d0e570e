"""The go-infer compatible signed REST API: envelope, signatures, replay guard, pipelines."""

"""Built-in pipelines of the signed API; `base` holds the contract they follow."""

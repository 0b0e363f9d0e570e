"""The headers of the prefill/decode hand-off, shared by the portal (which sets the first) and the workers."""

# Portal → decode worker: the prefill workers to ask, best first, comma-separated.
PREFILL_WORKERS = "X-Prefill-Workers"
# Decode worker → prefill worker: answer the hand-off, not a completion.
PREFILL_ONLY = "X-Prefill-Only"

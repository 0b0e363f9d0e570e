"""The browser chat page: conversations, a websocket consumer and the model arena."""

"""gevent driver of a protocol Session and the WebSocket transport (both ends)."""

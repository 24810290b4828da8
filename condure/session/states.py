"""State names shared by the HTTP session and its halves."""

HEAD, WAIT, ACTIVE, CLOSED = "HEAD", "WAIT", "ACTIVE", "CLOSED"
# request body states
NO_BODY, BODY_PENDING, BODY_READING, BODY_DONE, BODY_ABANDONED = (
    "none", "pending", "reading", "done", "abandoned")
# response states
RESP_NONE, RESP_STREAMING, RESP_DONE = "none", "streaming", "done"

"""The dialects a client may speak to the hub: each a sans-I/O connection object.

A dialect takes the bytes a client sent and gives out the hub's requests (paced
and batched), the answers to send back, and when to close; it owns no socket,
thread or clock. `base` holds what every dialect shares, `jsonlines` the
server's own JSON-lines protocol. Encoding answers to bytes is the delivery
edge's business, not a dialect's.
"""

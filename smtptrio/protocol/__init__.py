"""The sans-I/O SMTP engine: bytes in, events out, replies to bytes.

No trio, no sockets, no clock.
"""

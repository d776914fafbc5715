"""File sync.

Live code directories, the clients that mirror storage into them, their
check-ins, the server side, and rollback.
"""

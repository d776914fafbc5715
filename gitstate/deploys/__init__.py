"""The deploy queue.

The queue records, the workers that run them, the gates that guard them,
and the replay that checks them from the audit trail.
"""

"""gatekeeper's gates.

Groups, services, environments, tickets and the FIFO queue, time rules and
holidays.
"""

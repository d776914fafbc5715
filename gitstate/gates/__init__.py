"""gatekeeper's gates: groups, services, environments, tickets, the FIFO queue, time rules and holidays."""

"""The deploy queue, the workers that run it, the gates that guard it, and the replay that checks it from the audit trail."""

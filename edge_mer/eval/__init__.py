"""Protocols (leave-one-subject-out, MEGC composite) and the MEGC metrics (numpy only)."""

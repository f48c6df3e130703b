"""Protocols: what a run trains on and evaluates on, and the settings that change numbers."""

"""Experimentation: the simulated users, interleaving verdicts, exploration costs and off-policy evaluation."""

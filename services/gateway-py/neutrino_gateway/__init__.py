"""Neutrino gateway: the public HTTP API for tasks, in front of one or many orchestrators."""

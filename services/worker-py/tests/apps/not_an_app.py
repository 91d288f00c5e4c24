"""Test module whose `app` is not a neutrino.App."""

app = {"tasks": []}

"""Test app that fails at import, as a user's app with a bug would."""

from neutrino import App

app = App("broken")


def _configure() -> None:
    raise RuntimeError("this app is broken on purpose")


_configure()

"""An app that takes a moment to import: clients that ask before it is ready must wait, not fail."""

import time

from neutrino import App

time.sleep(0.5)
app = App("slow")


@app.task()
def double(n: int) -> int:
    """Twice n."""
    return 2 * n

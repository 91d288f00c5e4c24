"""An app that takes a moment to import and then fails: tasks submitted meanwhile must be answered."""

import time

time.sleep(1.0)
raise RuntimeError("this app is broken on purpose, slowly")

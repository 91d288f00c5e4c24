"""An app whose import fails: the zygote must report it once, not restart-loop."""

raise RuntimeError("this app is broken on purpose")

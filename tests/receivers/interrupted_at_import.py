"""A receivers module whose import raises KeyboardInterrupt (sqsd must say which module)."""

raise KeyboardInterrupt

"""The test project's one app: orders, shipped by a receiver."""

"""Integrations with other frameworks. Each subpackage imports its framework lazily:
``import sqsd`` never imports any of them."""

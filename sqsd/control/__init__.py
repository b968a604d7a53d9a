"""The control socket: connections in ``server``; the wire format is ``sqsd_client.protocol``."""

"""The control socket: connections in ``server``, commands acting on the master in
``commands`` (typed against its ``Supervisor`` protocol), the status reply as data in
``status`` and for people in ``render``; SQS work for commands runs in ``queries``
children. The wire format is ``sqsd_client.protocol``."""

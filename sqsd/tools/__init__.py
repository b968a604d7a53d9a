"""sqsctl's tools that act on SQS itself (``sqsctl send``, ``sqsctl dlq``).

They run in the sqsctl process with boto3, configured like any producer from the daemon's
configuration file (``-c``, ``$SQSD_CONFIG``, /etc/sqsd/sqsd.toml: prefix, region,
endpoint), and with the credentials of whoever runs them: the daemon never lends its own
credentials to a socket client. The running daemon is only asked (``status``, open to its
clients group) which queues exist, so queues registered in code are known too.
"""

"""What the test suites (tests/, tests/chaos/) and the benchmarks (bench/) share.

One of each, built on what sqsd ships for its users' own tests:

- the SQS endpoint: ``sqsd.local.LocalEndpoint`` (moto's server on a free loopback port);
- the configuration writer: ``sqsd.testing_daemon.config_text``;
- the daemon harness: ``sqsd.testing_daemon.DaemonProcess``, extended for sqsd's own suite
  by ``tests.support.daemon.Daemon`` (process titles, raw control requests);
- the SQS proxy with counting and fault modes: ``tests.support.proxy.SQSProxy``.
"""

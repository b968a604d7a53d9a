"""Handler modules that integration tests give to a real sqsd daemon.

Every handler appends what it saw to the file named by ``SQSD_TEST_RECORD``
(see :mod:`tests.receivers.record`), so the test process can observe the
daemon from outside.
"""

"""Code that runs inside the peers' processes (bench/.peers-venv) or as sqsd's handlers.

Standard library only at import time, except the module of each peer: ``dramatiq_app``
imports dramatiq, ``celery_app`` imports Celery, and both exist only in the peers' venv.
Every system runs the same handler work (``common.work``) and reports its first message the
same way, so the harness times all of them alike.
"""

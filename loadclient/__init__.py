"""loadclient: thousands of fake Comet clients proving every request is answered and no event lost.

Command line: ``python -m loadclient URL --clients N ...`` (see ``loadclient/README.md``).
From Python::

    from loadclient import run
    report = run("http://127.0.0.1:8080", clients=500, duration=5, notify_rate=100)
    assert report.ok, report.format_text()

No monkey-patching happens on import: the client uses gevent sockets directly.
"""
from .report import Report
from .runner import Options, Run, run

__all__ = ["Options", "Report", "Run", "run"]

"""moto server for the tests, answering one request at a time.

`moto_server` runs threaded, and moto's DynamoDB backend then loses writes when two requests
write to one table at the same moment (our concurrency conformance checks caught it), while real
DynamoDB serialises conflicting writes. Serving one request at a time keeps the emulator
consistent; the tests are light enough that it costs nothing noticeable.

Usage: python tests/moto_server.py HOST PORT
"""

import os
import signal
import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    os.environ.setdefault("MOTO_PORT", str(port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(host, port, app, threaded=False, use_reloader=False, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()

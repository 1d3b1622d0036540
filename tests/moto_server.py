"""moto server for the tests, handling one request at a time.

`moto_server` runs threaded, and moto's DynamoDB backend then loses writes when two requests
write to one table at the same moment (our concurrency conformance checks caught it), while real
DynamoDB serialises conflicting writes. So requests are handled one at a time, under one lock.

Connections are still accepted by a thread each: a server that accepts only between requests
lets its listen backlog overflow when a test fires hundreds of requests at once (200 concurrent
proxied requests are each one DynamoDB transaction), and clients then fail to connect.

Usage: python tests/moto_server.py HOST PORT
"""

import os
import signal
import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    os.environ.setdefault("MOTO_PORT", str(port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def one_at_a_time(environ, start_response):
        with lock:
            result = app(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
        return [body]

    run_simple(host, port, one_at_a_time, threaded=True, use_reloader=False, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""An HTTP/1.1 proxy on 127.0.0.1 that answers every request a fixed delay late.

    benches/latency_proxy.py UPSTREAM_PORT LATENCY_MS [PORT_FILE]

Forwards each request unchanged to 127.0.0.1:UPSTREAM_PORT (a local S3 server) on a thread of
its own, after sleeping LATENCY_MS: a local server then behaves like a remote object store,
where every request costs a round trip however small it is. Prints (or writes to PORT_FILE)
the port it listens on. Used by benches/s3_latency.sh.
"""

import http.client
import http.server
import sys
import time

UPSTREAM = int(sys.argv[1])
LATENCY = float(sys.argv[2]) / 1000.0
HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade", "expect"}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def forward(self):
        data = self.body()
        time.sleep(LATENCY)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        headers["Content-Length"] = str(len(data))
        conn = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=120)
        try:
            conn.request(self.command, self.path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in HOP and k.lower() != "content-length":
                self.send_header(k, v)
        # A HEAD answer has no body but the length of the object's.
        length = resp.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port = str(server.server_address[1])
    if len(sys.argv) > 3:
        with open(sys.argv[3], "w") as f:
            f.write(port)
    else:
        print(port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

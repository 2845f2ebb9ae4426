"""A stand-in for `agentvault serve` used only by the harness self-test: it
prints the listening line, answers /healthz, and exits 0 on SIGTERM."""
import signal
import socket
import sys
import threading


def main(argv):
    listen = argv[argv.index("--listen") + 1]
    host, port = listen.rsplit(":", 1)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, int(port)))
    srv.listen(16)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    print(f"agentvault: listening on {host}:{srv.getsockname()[1]}", file=sys.stderr, flush=True)
    print("debug: some log line", file=sys.stderr, flush=True)
    srv.settimeout(0.1)
    while not stop.is_set():
        try:
            c, _ = srv.accept()
        except socket.timeout:
            continue
        c.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
        if data.startswith(b"GET /healthz "):
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
        else:
            c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        c.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

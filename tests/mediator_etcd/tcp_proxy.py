"""A loopback TCP proxy that can lose answers: the request reaches etcd, the reply does not.

This is how a write whose answer is lost looks to the client (a timeout or a reset after the
request was sent). Real sockets, real etcd behind it; only the reply is thrown away.
"""
import socket
import threading

from etcd_cluster import HOST


class LossyProxy(object):
    def __init__(self, target_port):
        self.target_port = target_port
        self.drop_txn_replies = 0      # how many replies to /v3/kv/txn requests to swallow
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((HOST, 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.url = "http://%s:%d" % (HOST, self.port)
        self._stop = False
        self._lock = threading.Lock()
        self._socks = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        self.listener.settimeout(0.2)
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection((HOST, self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            self._socks += [client, server]
            state = {"drop": False}
            threading.Thread(target=self._pipe, args=(client, server, state, True),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, state, False),
                             daemon=True).start()

    def _pipe(self, src, dst, state, upstream):
        src.settimeout(10)
        try:
            while not self._stop:
                data = src.recv(65536)
                if not data:
                    break
                if upstream and b"POST /v3/kv/txn " in data:
                    with self._lock:
                        if self.drop_txn_replies > 0:
                            self.drop_txn_replies -= 1
                            state["drop"] = True
                if not upstream and state["drop"]:
                    self.dropped = getattr(self, "dropped", 0) + 1
                    break  # etcd answered: throw the answer away and cut the line
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def cut(self):
        """Make etcd unreachable through this proxy: refuse new connections, drop open ones."""
        self.listener.close()
        for s in self._socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(2)

    def restore(self):
        """Listen again on the same port."""
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((HOST, self.port))
        self.listener.listen(16)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def close(self):
        self._stop = True
        self.listener.close()
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass
        self._thread.join(2)

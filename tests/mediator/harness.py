"""A real mediator (TLS on 127.0.0.1, admin unix socket) in a thread of the test process."""
import asyncio
import json
import os
import threading

from iscsi_ha_mediator import cli, config
from iscsi_ha_mediator.server import MediatorServer

from iscsi_ha.witness import MediatorClient


class Running(object):
    def __init__(self, state_dir, lease=1.0, margin=0.3, **overrides):
        self.state_dir = str(state_dir)
        if not os.path.exists(os.path.join(self.state_dir, "tls", "server.crt")):
            assert cli.main(["--config", "/nonexistent", "--state-dir", self.state_dir, "init",
                             "--name", "127.0.0.1"]) == 0
        values = {"state_dir": self.state_dir, "listen": "127.0.0.1", "port": "0",
                  "lease": str(lease), "margin": str(margin)}
        values.update({k: str(v) for k, v in overrides.items()})
        self.settings = config.load("/nonexistent", values)
        self.loop = asyncio.new_event_loop()
        self.server = None
        self._stop = None
        ready = threading.Event()
        self.error = None

        def run():
            asyncio.set_event_loop(self.loop)
            try:
                self.server = MediatorServer(self.settings)
                self.loop.run_until_complete(self.server.start())
                self._stop = asyncio.Event()
            except Exception as exc:   # surfaced to the test
                self.error = exc
                ready.set()
                return
            ready.set()
            self.loop.run_until_complete(self._stop.wait())
            self.loop.run_until_complete(self.server.stop())
            self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(20), "mediator did not start"
        if self.error:
            raise self.error
        self.port = self.server.port

    def stop(self):
        if self._stop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
            self.thread.join(20)

    def admin(self, **req):
        """Through the real admin unix socket; raises cli.CliError when refused."""
        return cli.admin_call(self.settings, req)

    def on_loop(self, fn, *args):
        fut = asyncio.run_coroutine_threadsafe(_wrap(fn, *args), self.loop)
        return fut.result(20)

    def enroll(self, tmp_path, pool, node, rotate=False, overlap=None):
        req = {"op": "cred-rotate" if rotate else "cred-issue", "pool": pool, "node": node}
        if overlap is not None:
            req["overlap"] = overlap
        bundle = self.admin(**req)["bundle"]
        d = os.path.join(str(tmp_path), "cred-%s-%s-%s" % (pool, node, bundle["cred_id"]))
        os.makedirs(d)
        for k in ("ca", "cert", "key"):
            with open(os.path.join(d, k + ".pem"), "w") as handle:
                handle.write(bundle[k])
        return d

    def client(self, cred_dir, pool, node, timeout=3.0):
        return MediatorClient([("127.0.0.1", self.port)], os.path.join(cred_dir, "ca.pem"),
                              os.path.join(cred_dir, "cert.pem"),
                              os.path.join(cred_dir, "key.pem"), pool, node, timeout=timeout)


async def _wrap(fn, *args):
    out = fn(*args)
    if asyncio.iscoroutine(out):
        out = await out
    return out


def drbd(role="Secondary", disk="UpToDate", conn="Connected", peer_disk="UpToDate",
         uuid="8E0E9B2D3B0E1B4C"):
    return {"role": role, "disk": disk, "conn": conn, "peer_disk": peer_disk,
            "current_uuid": uuid}

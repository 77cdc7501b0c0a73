"""A real SMTP server (aiosmtpd) for the lab: it accepts every message and appends it as one
JSON line (time, sender, recipients, subject, the X-iscsi-ha-Alert header, body) to a file.

    python -m iscsi_ha_lab.smtp_sink --listen 192.0.2.50:2525 --out mail.jsonl

The lab runs it inside the client namespace, so the agents reach it over the lab's bridge.
"""
import argparse
import email
import email.policy
import json
import signal
import threading
import time

from aiosmtpd.controller import Controller


class Recorder(object):
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.original_content or envelope.content,
                                           policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",))
        entry = {"time": time.time(), "from": envelope.mail_from, "to": envelope.rcpt_tos,
                 "subject": str(message.get("Subject", "")),
                 "alert": str(message.get("X-iscsi-ha-Alert", "")),
                 "body": body.get_content() if body is not None else ""}
        with self.lock, open(self.path, "a") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
        return "250 OK"


def read_mail(path):
    try:
        with open(path) as handle:
            return [json.loads(line) for line in handle if line.strip()]
    except (OSError, IOError):
        return []


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m iscsi_ha_lab.smtp_sink")
    parser.add_argument("--listen", required=True, help="ADDR:PORT")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    host, port = args.listen.rsplit(":", 1)
    controller = Controller(Recorder(args.out), hostname=host, port=int(port))
    controller.start()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    finally:
        controller.stop()


if __name__ == "__main__":
    main()

"""Duplicate-address detection beside the promotion.

In a promote pass the floating IP comes last (DRBD Primary, target with its LUNs, then the
address), and its duplicate-address window (ARP_DAD_TIMEOUT) used to start only then. The probe
does not depend on DRBD or the target, so when the full window applies (no orderly release by
the peer: a crash, a cut link) it starts with the pass's first action and runs beside them; the
address step then takes its verdict. The window still ends right before the address is added
when the promotion is shorter than the window, and a few tenths of a second before otherwise.
After an orderly release the short probe (ARP_DAD_RELEASED_TIMEOUT) starts with the pass too:
the peer released the address before it demoted DRBD, so any probe of this pass comes after.
"""
import logging
import threading

log = logging.getLogger("iscsi-ha")


class EarlyDad(threading.Thread):
    def __init__(self, vip, **window):
        threading.Thread.__init__(self, name="early-dad")
        self.daemon = True
        self.vip = vip
        self.window = window          # is_free()'s count/timeout; none: the full window
        self.free, self.error, self.responders = None, None, []

    def run(self):
        try:
            self.free = self.vip.is_free(**self.window)
            self.responders = list(getattr(self.vip, "last_responders", None) or [])
        except Exception as exc:  # handed to the address step, never lost
            self.error = exc

    def verdict(self, timeout):
        """True (free), False (taken: ``responders``), or None when it did not finish in
        ``timeout`` (the caller then runs the full DAD itself); its error is raised."""
        self.join(timeout)
        if self.is_alive():
            log.warning("floating IP: early duplicate-address detection still running after "
                        "%.1f s; running it again", timeout)
            return None
        if self.error is not None:
            raise self.error
        return self.free if self.free in (True, False) else None


def start(vip, **window):
    probe = EarlyDad(vip, **window)
    probe.start()
    return probe

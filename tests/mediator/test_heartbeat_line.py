"""The heartbeat's wire line (encoded once per record revision, live fields formatted per
heartbeat) says exactly what the answer dict says, in every state it can be in."""
import asyncio
import json

from iscsi_ha_mediator import storage as st
from iscsi_ha_mediator.service import Mediator
from iscsi_ha_mediator.sqlite_store import SqliteStorage

from harness import drbd


class Flaky(SqliteStorage):
    down = False
    available = property(lambda self: not self.down)
    unavailable_reason = property(lambda self: "test" if self.down else None)


class Clock(object):
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def both(m, pool, node, req, rid):
    """(answer dict with id, parsed line); the same heartbeat is recorded twice at one
    instant, so both see the same state."""
    line = m.heartbeat_line(pool, node, req, rid)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    return dict(m.heartbeat(pool, node, req), id=rid), json.loads(line)


def test_line_equals_dict_in_every_state(tmp_path):
    async def run():
        store = Flaky(str(tmp_path / "m.db"), lease=2.0, margin=0.5).start()
        rec = st.new_record("p", ["a", "b"], lease=2.0)
        store.commit("p", 0, rec, {"event": "t"})
        clock = Clock()
        m = Mediator(store, clock=clock)
        seen = []
        for rid in (1, 0, -7, 2 ** 40, "x\"y\n", None, 1.5, [1], {"k": "v"}):
            seen.append(both(m, "p", "a", {"gen": 1, "drbd": drbd("Primary")}, rid))
        clock.t += 0.25                       # peer never seen, then seen, then stale
        seen.append(both(m, "p", "b", {"gen": 1, "drbd": drbd()}, 3))
        seen.append(both(m, "p", "a", {"gen": 1}, 4))
        clock.t += 5.0                        # grace over, peer b stale
        seen.append(both(m, "p", "a", {"gen": 1, "drbd": drbd("Primary")}, 5))
        await asyncio.sleep(0.05)             # let a background in-sync commit land
        # a new record revision (another primary): the encoded part follows it; deposed
        cur, rev = store.cached("p")
        store.commit("p", rev, dict(cur, primary="b", generation=cur["generation"] + 1),
                     {"event": "t"})
        seen.append(both(m, "p", "a", {"gen": 1, "drbd": drbd("Primary")}, 6))
        store.down = True                     # storage down: can_grant from the live state
        seen.append(both(m, "p", "a", {"gen": 1, "drbd": drbd("Primary")}, 7))
        store.down = False
        store.stop()
        return seen
    seen = asyncio.run(run())
    for want, got in seen:
        assert got == want
    assert {a["peer_alive"] for a, _ in seen} == {True, False}
    assert {a["peer_last_seen_ms"] is None for a, _ in seen} == {True, False}
    assert {a["deposed"] for a, _ in seen} == {True, False}
    assert {a["grace_left_ms"] > 0 for a, _ in seen} == {True, False}
    assert seen[-1][0]["can_grant"] is False
    assert len({a["gen"] for a, _ in seen}) >= 2

"""Where the lab finds what it runs: the repository it belongs to (``REPO``: the iscsi_ha
package, scripts/, init/, mediator/) and its own package root (``LAB_ROOT``, the ``lab/``
folder); :func:`pythonpath` for the processes it starts that import the lab as well as the
product (DRBD double wrappers, the mediator client call)."""
import os

LAB_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(LAB_ROOT)


def pythonpath(*extra):
    """PYTHONPATH: the repository (iscsi_ha), the lab, then ``extra``."""
    return os.pathsep.join([REPO, LAB_ROOT] + [e for e in extra if e])


def export_pythonpath():
    """Put the repository and the lab first on this process's PYTHONPATH, so that every
    process the lab starts (``python -m iscsi_ha_lab.X`` in a namespace, the agents, the DRBD
    double) runs this checkout's code, whatever the interpreter has installed."""
    current = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    wanted = [REPO, LAB_ROOT]
    os.environ["PYTHONPATH"] = os.pathsep.join(wanted + [p for p in current if p not in wanted])

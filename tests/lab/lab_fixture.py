"""What the lab tests share: :func:`running_lab`, a lab brought up for a test module under a
prefix of its own (never the admin's ihl- lab, never another test's), always taken down."""
import os

import pytest

from iscsi_ha_lab.lab import Lab, missing_prerequisites


def running_lab(tmp_path_factory, tag="", extra_problems=(), **options):
    """Yields an up :class:`Lab` (prefix ``ihlt<pid><tag>-``); skips naming what is missing."""
    problems = missing_prerequisites() + list(extra_problems)
    if problems:
        pytest.skip("; ".join(problems))
    lab = Lab(str(tmp_path_factory.mktemp("lab")),
              prefix="ihlt%d%s-" % (os.getpid() % 10000, tag), **options)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()

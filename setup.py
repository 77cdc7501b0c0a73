from setuptools import find_packages, setup

import re

with open("iscsi_ha/__init__.py") as handle:
    VERSION = re.search(r'__version__ = "([^"]+)"', handle.read()).group(1)

setup(
    name="iscsi-ha",
    version=VERSION,
    description="Highly available DRBD-replicated iSCSI storage for two-host XCP-ng/XenServer "
                "pools (successor to HA-Lizard iSCSI-HA)",
    license="GPL-3.0-or-later",
    # the product only: the lab is its own package (lab/, iscsi-ha-lab), never in this wheel
    packages=find_packages(include=["iscsi_ha", "iscsi_ha.*"]),
    package_data={"iscsi_ha.alerts": ["templates/*.j2"]},
    python_requires=">=3.6",
    install_requires=[
        "XenAPI",
        "psutil",
        "jinja2",
        "rich",
        'dataclasses; python_version < "3.7"',
    ],
    extras_require={
        # cryptography: bench/mediator_scale.py signs 20,000 client certificates in seconds
        "test": ["pytest", "pytest-mock", "pytest-timeout", "aiosmtpd", "vermin",
                 "cryptography"],
    },
    entry_points={
        "console_scripts": [
            "iscsi-ha = iscsi_ha.cli.agent_main:main_exit",
            "iscsi-cfg = iscsi_ha.cli.cfg_main:main_exit",
            "iscsi-ha-watchdog = iscsi_ha.watchdog:main_exit",
        ],
    },
    data_files=[("share/iscsi-ha", ["etc/iscsi-ha/iscsi-ha.conf"])],
    classifiers=[
        "License :: OSI Approved :: GNU General Public License v3 or later (GPLv3+)",
        "Programming Language :: Python :: 3.6",
        "Operating System :: POSIX :: Linux",
    ],
)

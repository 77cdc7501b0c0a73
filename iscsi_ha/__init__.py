"""iscsi-ha: keeps DRBD-replicated iSCSI storage on the XCP-ng/XenServer pool master."""

__version__ = "0.1.0"

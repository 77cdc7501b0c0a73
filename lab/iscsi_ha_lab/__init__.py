"""The iscsi-ha lab: two simulated dom0s (and a mediator) on one machine. Importing it puts this
checkout's product and lab first on PYTHONPATH for every process the lab starts
(:func:`iscsi_ha_lab.paths.export_pythonpath`)."""
from iscsi_ha_lab import paths as _paths

_paths.export_pythonpath()

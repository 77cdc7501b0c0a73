"""Logging: syslog with the tag ``iscsi-ha`` (user facility, as HA-Lizard did), an optional
file, and stderr when asked (foreground runs)."""
import logging
import logging.handlers
import os
import socket
import stat
import sys

from iscsi_ha.files import check_appendable

TAG = "iscsi-ha"


def setup(config=None, stderr=True, level=logging.INFO):
    logger = logging.getLogger(TAG)
    logger.setLevel(logging.DEBUG if os.environ.get("ISCSI_HA_DEBUG") else level)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = False
    enabled = config is None or config.ENABLE_LOGGING
    if stderr:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler.setLevel(logging.DEBUG if enabled else logging.WARNING)
        logger.addHandler(handler)
    if config is not None and enabled and config.SYSLOG_SOCKET:
        _add_syslog(logger, config.SYSLOG_SOCKET)
    if config is not None and config.LOG_FILE:
        why = check_appendable(config.LOG_FILE)
        if why:       # never block on a FIFO nor die: say it once, log elsewhere
            sys.stderr.write("iscsi-ha: not logging to LOG_FILE %s: %s\n" % (config.LOG_FILE,
                                                                             why))
            return logger
        handler = logging.FileHandler(config.LOG_FILE)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s " + TAG + "[%(process)d]: %(levelname)s %(message)s"))
        logger.addHandler(handler)
    return logger


def _add_syslog(logger, address):
    try:
        if not stat.S_ISSOCK(os.stat(address).st_mode):   # a regular file: no traceback per line
            return
    except OSError:
        return
    try:
        handler = logging.handlers.SysLogHandler(
            address=address, facility=logging.handlers.SysLogHandler.LOG_USER,
            socktype=socket.SOCK_DGRAM)
    except (OSError, socket.error):
        return
    handler.setFormatter(logging.Formatter(TAG + "[%(process)d]: %(message)s"))
    logger.addHandler(handler)

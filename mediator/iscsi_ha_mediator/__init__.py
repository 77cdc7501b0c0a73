"""iscsi-ha-mediator: the third-site witness for iscsi-ha pools.

Runs on a third host (not in dom0), so it may use a modern Python (3.8+). Standard library only:
asyncio + ssl for the service, sqlite3 for durable state, the openssl CLI for certificates.
"""
__version__ = "0.1.0"

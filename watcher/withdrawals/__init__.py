"""Withdrawal intake (validation of signed requests) and signing; no Kafka here.

The state machine itself is pure and lives in :mod:`watcher.core.withdrawals`.
"""

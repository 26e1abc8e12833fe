"""Shared pytest fixtures: real Kafka, anvil, btcd and Prometheus on free ports.

Each service starts on first use (session scope) through deploy/local/devstack.py in a
temporary folder, installs itself into the cache if missing, and stops at session end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.btc_wallet import RegtestWallet
from tests.support.services import (
    AnvilFactory,
    AnvilService,
    BtcdService,
    KafkaService,
    PrometheusService,
    ServiceManager,
)

# config/example.yaml reads its Bitcoin RPC credentials from the environment, as production
# does; tests that load it get example values (never real secrets).
os.environ.setdefault("BTC_RPC_USER", "watcher-example")
os.environ.setdefault("BTC_RPC_PASSWORD", "example-password")

INTEGRATION_MARKER = "integration: runs against real services (Kafka, anvil, btcd, Prometheus)"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", INTEGRATION_MARKER)


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceManager]:
    manager = ServiceManager(tmp_path_factory.mktemp("services"))
    try:
        yield manager
    finally:
        manager.close()


@pytest.fixture(scope="session")
def kafka(services: ServiceManager) -> KafkaService:
    return services.kafka()


@pytest.fixture(scope="session")
def btcd(services: ServiceManager) -> BtcdService:
    return services.btcd()


@pytest.fixture(scope="session")
def btc_wallet(btcd: BtcdService) -> RegtestWallet:
    """Signs regtest transactions with the mining key; one per session, so that no two
    tests spend the same coin."""
    return RegtestWallet(btcd)


@pytest.fixture(scope="session")
def anvil(services: ServiceManager) -> AnvilService:
    return services.anvil()


@pytest.fixture(scope="session")
def anvil_factory(services: ServiceManager) -> AnvilFactory:
    return AnvilFactory(services)


@pytest.fixture(scope="session")
def prometheus(services: ServiceManager) -> PrometheusService:
    return services.prometheus()

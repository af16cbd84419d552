"""The known-hosts store shared by workers: no pin lost to a concurrent writer, no loop blocking."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from vastai_async.errors import ConfigError
from vastai_async.known_hosts import KnownHostsStore

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyHostKeyHostKeyHostKeyHostKeyHost"


def test_concurrent_writers_sharing_a_state_directory_lose_no_pin(tmp_path: Path) -> None:
    """Four workers pin 25 instances each at once; every one of the 100 pins is kept."""
    barrier = threading.Barrier(4)

    def worker(n: int) -> None:
        store = KnownHostsStore(tmp_path)  # each worker its own store, as separate processes
        barrier.wait()
        for i in range(25):
            store.pin(n * 1000 + i, "127.0.0.1", 2200 + i, KEY)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pins = KnownHostsStore(tmp_path).all()
    assert len(pins) == 100
    lines = (tmp_path / "ssh" / "known_hosts").read_text().splitlines()
    assert len(lines) == 100


async def test_async_methods_round_trip_through_the_index(tmp_path: Path) -> None:
    store = KnownHostsStore(tmp_path)
    pinned = await store.apin(7, "10.0.0.1", 22, KEY + " comment")
    assert await store.aget(7) == pinned
    assert pinned.known_hosts_line() == f"10.0.0.1 {KEY}"
    index = json.loads(store.index_path.read_text())
    assert index["instances"]["7"]["key"] == KEY
    assert await store.aremove(7) is True
    assert await store.aget(7) is None


def test_a_malformed_index_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    store = KnownHostsStore(tmp_path)
    store.directory.mkdir(parents=True)
    store.index_path.write_text(json.dumps({"instances": {"3": {"host": "h"}}}))
    with pytest.raises(ConfigError, match=r"known_hosts\.json"):
        store.get(3)

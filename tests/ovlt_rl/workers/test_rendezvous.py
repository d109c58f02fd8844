"""The torch.distributed rendezvous store listens on the address it is given, not on every
interface (torch's own TCPStore server binds `::`); clients reach it there."""

import datetime

import psutil
import pytest

from ovlt_rl.workers.rendezvous import free_port, tcp_store

TIMEOUT = datetime.timedelta(seconds=20)


def _listening(port: int) -> list[str]:
    return [c.laddr.ip for c in psutil.Process().net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2"])  # 127.0.0.2: any address, not just loopback's first
def test_the_store_listens_on_its_host_only(host):
    port = free_port(host)
    # world_size 2 would wait for the client in the constructor: use no fixed size here.
    server = tcp_store(host, port, None, is_master=True, timeout=TIMEOUT)
    assert _listening(port) == [host]
    client = tcp_store(host, port, None, is_master=False, timeout=TIMEOUT)
    client.set("k", "v")
    assert server.get("k") == b"v"
    del client, server
    assert _listening(port) == []  # the store owned the socket and closed it


def test_a_taken_port_is_a_clear_error():
    port = free_port("127.0.0.1")
    first = tcp_store("127.0.0.1", port, None, is_master=True, timeout=TIMEOUT)
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port} for the torch.distributed rendezvous"):
        tcp_store("127.0.0.1", port, None, is_master=True, timeout=TIMEOUT)
    del first

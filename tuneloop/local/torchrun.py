"""``torchrun`` for the local cloud's multi-process jobs, with its rendezvous store on
loopback.

torchrun's agent hosts the job's TCPStore (the rendezvous every worker joins), and c10d
binds that store's port on every interface, whatever ``--master_addr`` says. Here the agent
binds the port on 127.0.0.1 first and starts the store on that socket
(``master_listen_fd``); the store is multi-tenant, so the static rendezvous that torchrun
then creates on the same port is served by this one. Everything else is torchrun's own
``main``: the framework layer (``pytorch.py``) puts this first on the job's ``PATH``.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

DEFAULT_PORT = 29500


def main() -> None:
    from torch.distributed import TCPStore
    from torch.distributed.run import main as torchrun

    port = int(os.environ.get("PET_MASTER_PORT") or DEFAULT_PORT)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    store = TCPStore(
        "127.0.0.1",
        port,
        None,
        True,
        timedelta(seconds=900),
        wait_for_workers=False,
        multi_tenant=True,
        master_listen_fd=listener.fileno(),
    )
    try:
        torchrun()
    finally:
        del store
        listener.close()


if __name__ == "__main__":
    main()

"""``torchrun`` for the local cloud's multi-process jobs, with its rendezvous store on
loopback.

torchrun's agent hosts the job's TCPStore (the rendezvous every worker joins), and c10d
binds that store's port on every interface, whatever ``--master_addr`` says. Here the agent
binds a port the kernel picks on 127.0.0.1 first and starts the store on that socket
(``master_listen_fd``); the store is multi-tenant, so the static rendezvous that torchrun
then creates on the same port is served by this one. Everything else is torchrun's own
``main``: the framework layer (``pytorch.py``) puts this first on the job's ``PATH``, and
the local SageMaker lets no request set torchrun's ``PET_*`` variables.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta


def main() -> None:
    from torch.distributed import TCPStore
    from torch.distributed.run import main as torchrun

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", int(os.environ.get("PET_MASTER_PORT") or 0)))
    listener.listen(128)
    # The port the kernel picked is the rendezvous port torchrun reads from here on: no port
    # is chosen first and bound later, where another process could take it in between.
    port = int(listener.getsockname()[1])
    os.environ["PET_MASTER_PORT"] = str(port)
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

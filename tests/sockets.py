"""What a set of processes listens on, read from /proc: each process's socket descriptors
matched with the kernel's TCP and UDP tables (IPv4 and IPv6)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"


def process_tree(roots: list[int]) -> list[int]:
    """``roots`` and every process descended from them (by parent PID), alive now."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    found = [pid for pid in roots if pid in parents]
    for pid in found:  # grows while it is walked
        found += [child for child, parent in parents.items() if parent == pid and child not in found]
    return found


def _address(hex_address: str) -> tuple[str, int]:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(raw[::-1])
    else:  # four 32-bit words, each in host (little-endian) order
        address = ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
    return str(address), int(port, 16)


def _bound_sockets() -> dict[str, tuple[str, int]]:
    """inode → (address, port) of every listening TCP socket and unconnected UDP socket."""
    bound: dict[str, tuple[str, int]] = {}
    tables = {"tcp": TCP_LISTEN, "tcp6": TCP_LISTEN, "udp": UDP_UNCONNECTED, "udp6": UDP_UNCONNECTED}
    for table, state in tables.items():
        path = Path("/proc/net") / table
        if not path.is_file():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == state:
                bound[fields[9]] = _address(fields[1])
    return bound


def listening(pids: list[int]) -> list[tuple[str, int]]:
    """The (address, port) each of ``pids`` listens on."""
    bound = _bound_sockets()
    found = []
    for pid in pids:
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in descriptors:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in bound:
                found.append(bound[target[8:-1]])
    return sorted(set(found))


def is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback

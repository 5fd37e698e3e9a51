"""Debian's nginx in front of a test server, configured with the block docs/deploy.md documents.

The block is taken from the document as it stands (the ```nginx fence after the
``<!-- nginx-block`` marker) and only its placeholders change: the upstream's port, the
listen address, the log directory. The rest of the configuration is the minimum nginx needs
to run as any user from a temporary directory (pid, logs, temp paths there).

The listening socket is made here (port 0, so the kernel picks a free port) and handed to
nginx as an inherited socket (the ``NGINX`` environment variable nginx uses for binary
upgrades): it listens before nginx even starts, so a test connects at once, with no race
for a port and no waiting for nginx to bind.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import gevent

DEPLOY_MD = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"
NGINX = "/usr/sbin/nginx"


def documented_block(text: str | None = None) -> str:
    """The nginx block of docs/deploy.md, exactly as written."""
    text = DEPLOY_MD.read_text(encoding="utf-8") if text is None else text
    match = re.search(r"<!-- nginx-block.*?-->\s*```nginx\n(.*?)```", text, re.S)
    assert match, "docs/deploy.md has no ```nginx block after its <!-- nginx-block --> marker"
    return match.group(1)


def substitute(block: str, upstream_port: int, listen: str, log_dir: Path) -> str:
    """The block with its placeholders (upstream 127.0.0.1:8080, listen 80, /var/log/nginx) replaced."""
    replaced = block
    for placeholder, value in (("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream_port};"),
                               ("listen 80;", f"listen {listen};"),
                               ("/var/log/nginx/", f"{log_dir}/")):
        assert replaced.count(placeholder) == 1, f"the documented block should have one {placeholder!r}"
        replaced = replaced.replace(placeholder, value)
    return replaced


def main_config(tmp: Path, block_path: Path) -> str:
    """nginx.conf around the block: everything in ``tmp``; workers as root only when we are root."""
    temp_paths = "\n".join(f"    {kind}_temp_path {tmp}/{kind};" for kind in
                           ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user root;\n" if os.geteuid() == 0 else ""  # as root, nobody could not enter tmp (0700)
    return (f"{user}worker_processes 1;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log notice;\n"
            f"events {{ worker_connections 512; }}\n"
            f"http {{\n    access_log off;\n{temp_paths}\n    include {block_path};\n}}\n")


class Nginx:
    """nginx in the foreground on an inherited loopback socket, proxying to ``upstream_port``."""

    def __init__(self, tmp: Path, upstream_port: int, block: str | None = None) -> None:
        self.tmp = tmp
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        block_path = tmp / "geventcomet.conf"
        block_path.write_text(substitute(documented_block() if block is None else block, upstream_port,
                                         f"127.0.0.1:{self.port}", tmp), encoding="utf-8")
        (tmp / "nginx.conf").write_text(main_config(tmp, block_path), encoding="utf-8")
        fd = self.listener.fileno()
        os.set_inheritable(fd, True)
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"],
            env={**os.environ, "NGINX": f"{fd};"}, pass_fds=(fd,),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.listener.close()  # nginx holds it now; connections queue until its worker accepts

    def error_log(self) -> str:
        path = self.tmp / "error.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def access_log(self) -> str:
        path = self.tmp / "geventcomet.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # fast shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        gevent.spawn(self.proc.stderr.close)

"""Throw-away certificates for the TLS tests (the openssl command line)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1 / localhost (openssl CLI)."""
    cert, key = folder / "server.crt", folder / "server.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True, capture_output=True,
    )
    return cert, key


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def mtls_certs(folder: Path) -> dict[str, Path]:
    """A throw-away CA and, signed by it, a server certificate for 127.0.0.1 / localhost and a
    client certificate: keys ca, server_cert, server_key, client_cert, client_key."""
    f = {name: folder / f"{name}.pem" for name in ("ca", "ca_key", "server_cert", "server_key", "client_cert", "client_key")}
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=edgecnn test CA",
             "-keyout", f["ca_key"], "-out", f["ca"])  # fmt: skip
    for who, subject, ext in (
        ("server", "/CN=localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ("client", "/CN=edgecnn test client", "extendedKeyUsage=clientAuth"),
    ):
        csr, extfile = folder / f"{who}.csr", folder / f"{who}.ext"
        extfile.write_text(ext + "\n")
        _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", f[f"{who}_key"], "-out", csr)
        _openssl("x509", "-req", "-in", csr, "-CA", f["ca"], "-CAkey", f["ca_key"], "-CAcreateserial", "-days", "1",
                 "-extfile", extfile, "-out", f[f"{who}_cert"])  # fmt: skip
    return f

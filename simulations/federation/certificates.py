"""TLS certificates and SuperNode key pairs for a deployment, made with ``cryptography``.

A SuperLink with TLS needs a CA certificate, a server certificate signed by
that CA whose subject alternative names cover every address the SuperNodes,
the ``flwr`` CLI and the SuperLink's own ServerApp runtime use to reach it
(here ``127.0.0.1`` and ``localhost`` plus any extra hosts), and the server's
private key. Every client is given the CA certificate (``--root-certificates``
for ``flower-supernode``, ``root-certificates`` in the ``flwr`` CLI's
connection).

SuperNode authentication takes one elliptic-curve key pair per SuperNode on a
NIST curve: the private key in OpenSSH format (``flower-supernode
--auth-supernode-private-key``), the public key in OpenSSH format (``flwr
supernode register``).

Usage::

    python -m simulations.federation.certificates certs/ --supernodes 5 --host 192.168.1.10
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")
VALIDITY_DAYS = 365


@dataclass(frozen=True)
class ServerCertificates:
    """Paths of the SuperLink's TLS files (PEM).

    Attributes
    ----------
    ca_certificate : Path
        The CA certificate: the root certificate every client trusts.
    server_certificate : Path
        The SuperLink's certificate, signed by the CA.
    server_key : Path
        The SuperLink's private key.
    """

    ca_certificate: Path
    server_certificate: Path
    server_key: Path


@dataclass(frozen=True)
class SuperNodeKeys:
    """Paths of one SuperNode's authentication key pair (OpenSSH format).

    Attributes
    ----------
    private_key : Path
        For ``flower-supernode --auth-supernode-private-key``.
    public_key : Path
        For ``flwr supernode register``.
    """

    private_key: Path
    public_key: Path


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


def _pem_private_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _subject_alternative_names(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):  # unique, in order
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def generate_server_certificates(
    directory: Path,
    hosts: Iterable[str] = DEFAULT_HOSTS,
    *,
    validity_days: int = VALIDITY_DAYS,
) -> ServerCertificates:
    """Write a CA and a SuperLink certificate for ``hosts`` into ``directory``.

    Parameters
    ----------
    directory : Path
        Where ``ca.pem``, ``ca.key``, ``server.pem`` and ``server.key`` go.
    hosts : Iterable[str] (default: ("127.0.0.1", "localhost"))
        IP addresses and DNS names clients use to reach the SuperLink; each
        becomes a subject alternative name of the server certificate.
    validity_days : int (default: 365)
        How long both certificates are valid.

    Returns
    -------
    ServerCertificates
        The paths to pass to ``flower-superlink`` and its clients.
    """
    hosts = list(hosts)
    if not hosts:
        raise ValueError("the server certificate needs at least one host (IP address or name).")
    now = datetime.datetime.now(datetime.UTC)
    # A minute of slack for clocks that disagree slightly.
    not_before = now - datetime.timedelta(minutes=1)
    not_after = now + datetime.timedelta(days=validity_days)

    ca_key = _new_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dstar-flwr CA")])
    ca_certificate = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = _new_key()
    server_certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(_subject_alternative_names(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )

    paths = ServerCertificates(
        ca_certificate=directory / "ca.pem",
        server_certificate=directory / "server.pem",
        server_key=directory / "server.key",
    )
    _write(paths.ca_certificate, ca_certificate.public_bytes(serialization.Encoding.PEM))
    _write(directory / "ca.key", _pem_private_key(ca_key), private=True)
    _write(paths.server_certificate, server_certificate.public_bytes(serialization.Encoding.PEM))
    _write(paths.server_key, _pem_private_key(server_key), private=True)
    return paths


def generate_supernode_keys(directory: Path, name: str) -> SuperNodeKeys:
    """Write one SuperNode's EC key pair (SECP384R1, OpenSSH format).

    Parameters
    ----------
    directory : Path
        Where ``<name>`` (private key) and ``<name>.pub`` (public key) go.
    name : str
        The file name of the private key, e.g. ``supernode-0``.

    Returns
    -------
    SuperNodeKeys
        The private key for the SuperNode and the public key to register.
    """
    key = _new_key()
    paths = SuperNodeKeys(private_key=directory / name, public_key=directory / f"{name}.pub")
    _write(
        paths.private_key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
        private=True,
    )
    _write(
        paths.public_key,
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b"\n",
    )
    return paths


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: write the certificates and the SuperNode keys."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="where to write the files")
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        help="an extra IP address or DNS name of the SuperLink for the server certificate "
        "(repeatable; 127.0.0.1 and localhost are always included)",
    )
    parser.add_argument(
        "--supernodes",
        type=int,
        default=0,
        help="how many SuperNode key pairs to write (supernode-<i>, supernode-<i>.pub)",
    )
    args = parser.parse_args(argv)
    if args.supernodes < 0:
        parser.error("--supernodes must be >= 0")
    certificates = generate_server_certificates(args.directory, [*DEFAULT_HOSTS, *args.host])
    print(f"CA certificate:     {certificates.ca_certificate}")
    print(f"server certificate: {certificates.server_certificate}")
    print(f"server key:         {certificates.server_key}")
    for index in range(args.supernodes):
        keys = generate_supernode_keys(args.directory, f"supernode-{index}")
        print(f"SuperNode {index}: {keys.private_key} (private), {keys.public_key} (public)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

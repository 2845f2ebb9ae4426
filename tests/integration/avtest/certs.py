"""Test certificate authorities and server certificates (EC P-256).

Two CAs are made per test session:
  * the trusted test CA, passed to the daemon with --upstream-cacert, which
    signs the certificate of the `upstream` origin server;
  * an untrusted CA that signs the certificate of `bad_cert_upstream`.
"""
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Names carried by the upstream server certificate.
UPSTREAM_DNS_NAMES = ["api.openai.com", "api.github.com", "api.anthropic.com", "upstream.test",
                      "localhost"]
UPSTREAM_IP_NAMES = ["127.0.0.1"]


@dataclass
class CertPair:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path


@dataclass
class TestCA:
    """Paths of everything the suite needs (all PEM)."""

    dir: Path
    ca_pem: Path          # trusted test CA certificate (--upstream-cacert)
    ca_key: Path
    server_cert: Path     # leaf for UPSTREAM_*_NAMES, signed by the test CA
    server_key: Path
    bad_ca_pem: Path      # an unrelated CA nobody trusts
    bad_server_cert: Path  # same names, signed by the untrusted CA
    bad_server_key: Path


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "agentvault tests")])


def _write(pair_cert, pair_key, cert_path, key_path):
    cert_path.write_bytes(pair_cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(pair_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    key_path.chmod(0o600)


def make_ca(cn, directory, stem):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cp, kp = directory / f"{stem}.pem", directory / f"{stem}.key"
    _write(cert, key, cp, kp)
    return CertPair(cert, key, cp, kp)


def issue(ca, dns_names, ip_names, directory, stem):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    sans = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ip_names]
    cert = (x509.CertificateBuilder()
            .subject_name(_name(dns_names[0])).issuer_name(ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca.key.public_key()), critical=False)
            .sign(ca.key, hashes.SHA256()))
    cp, kp = directory / f"{stem}.pem", directory / f"{stem}.key"
    _write(cert, key, cp, kp)
    return CertPair(cert, key, cp, kp)


def build_test_ca(directory):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    good = make_ca("agentvault test CA", directory, "testca")
    leaf = issue(good, UPSTREAM_DNS_NAMES, UPSTREAM_IP_NAMES, directory, "upstream")
    bad = make_ca("untrusted test CA", directory, "badca")
    bad_leaf = issue(bad, UPSTREAM_DNS_NAMES, UPSTREAM_IP_NAMES, directory, "bad-upstream")
    return TestCA(dir=directory, ca_pem=good.cert_path, ca_key=good.key_path,
                  server_cert=leaf.cert_path, server_key=leaf.key_path,
                  bad_ca_pem=bad.cert_path, bad_server_cert=bad_leaf.cert_path,
                  bad_server_key=bad_leaf.key_path)

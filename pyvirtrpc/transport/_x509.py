"""Just enough X.509 for libvirt's certificate checks, without importing a crypto library.

Contract:

* :func:`load_pem_certs` / :func:`load_pem_crls` parse the PEM blocks of a
  file's content (``CERTIFICATE`` / ``X509 CRL``) into :class:`Cert` /
  :class:`Crl`; anything malformed raises :class:`X509Error` (plain text,
  never key material).  :func:`cert_from_der` parses one DER certificate
  (what ``ssl`` gives for the peer).
* :class:`Cert` exposes what libvirt's checks read (gnutls calls in
  brackets): validity (``get_activation_time``/``get_expiration_time``),
  basic constraints (``get_basic_constraints``), key usage bits in gnutls's
  numbering and the extension's critical flag (``get_key_usage``), extended
  key usage OIDs and critical flag (``get_key_purpose_oid``), subject
  alternative names, subject CNs, serial number, raw issuer/subject DNs.
* :func:`check_hostname` is ``gnutls_x509_crt_check_hostname`` (GnuTLS
  3.7): an IP address is matched against iPAddress SANs first; names (and
  IPs that matched no iPAddress SAN) against dNSName SANs,
  case-insensitively, with a ``*`` wildcard only in a name with at least
  two dots after it, matching within one label; the single subject CN is
  used only when the certificate has no dNSName or other address SAN and
  may serve as a TLS server.
* :func:`verify_signature` checks that ``issuer`` signed a certificate or
  CRL.  RSA PKCS#1 v1.5 (the signature certtool and openssl make by
  default) is checked here with plain integer arithmetic; other algorithms
  (RSA-PSS, ECDSA, EdDSA) go through the ``cryptography`` package, imported
  only then (it costs ~70 ms to import).
* :func:`issuer_status` plays ``gnutls_x509_crt_list_verify`` for one
  certificate against a CA list: the gnutls status bits libvirt turns into
  its reasons (signer not found, not trusted, insecure algorithm).

Pure functions on bytes; no I/O, no clock (``now`` comes in as an argument).
"""

from __future__ import annotations

import binascii
import calendar
import hashlib
import hmac
import ipaddress

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Optional, Sequence

    from cryptography.hazmat.primitives.hashes import HashAlgorithm

# gnutls_x509_crt_get_key_usage bits (the first byte of the DER BIT STRING)
KEY_DIGITAL_SIGNATURE = 0x80
KEY_NON_REPUDIATION = 0x40
KEY_KEY_ENCIPHERMENT = 0x20
KEY_DATA_ENCIPHERMENT = 0x10
KEY_KEY_AGREEMENT = 0x08
KEY_KEY_CERT_SIGN = 0x04
KEY_CRL_SIGN = 0x02
KEY_ENCIPHER_ONLY = 0x01
KEY_DECIPHER_ONLY = 0x8000

# GNUTLS_KP_* purpose OIDs
KP_TLS_WWW_SERVER = "1.3.6.1.5.5.7.3.1"
KP_TLS_WWW_CLIENT = "1.3.6.1.5.5.7.3.2"
KP_ANY = "2.5.29.37.0"

# gnutls_certificate_status_t bits libvirt looks at
CERT_INVALID = 1 << 1
CERT_REVOKED = 1 << 5
CERT_SIGNER_NOT_FOUND = 1 << 6
CERT_INSECURE_ALGORITHM = 1 << 8
CERT_SIGNATURE_FAILURE = 1 << 17

_OID_CN = "2.5.4.3"
_OID_BASIC_CONSTRAINTS = "2.5.29.19"
_OID_KEY_USAGE = "2.5.29.15"
_OID_EXT_KEY_USAGE = "2.5.29.37"
_OID_SAN = "2.5.29.17"
_OID_RSA = "1.2.840.113549.1.1.1"

#: sha*WithRSAEncryption -> (hashlib name, DER DigestInfo prefix)
_RSA_PKCS1 = {
    "1.2.840.113549.1.1.4": ("md5", bytes.fromhex("3020300c06082a864886f70d020505000410")),
    "1.2.840.113549.1.1.5": ("sha1", bytes.fromhex("3021300906052b0e03021a05000414")),
    "1.2.840.113549.1.1.14": ("sha224", bytes.fromhex("302d300d06096086480165030402040500041c")),
    "1.2.840.113549.1.1.11": ("sha256", bytes.fromhex("3031300d060960864801650304020105000420")),
    "1.2.840.113549.1.1.12": ("sha384", bytes.fromhex("3041300d060960864801650304020205000430")),
    "1.2.840.113549.1.1.13": ("sha512", bytes.fromhex("3051300d060960864801650304020305000440")),
}
#: algorithms gnutls flags GNUTLS_CERT_INSECURE_ALGORITHM for by default
_INSECURE_SIGNATURES = {"1.2.840.113549.1.1.2", "1.2.840.113549.1.1.4"}  # md2, md5 with RSA

_ECDSA_HASHES = {
    "1.2.840.10045.4.1": "SHA1",
    "1.2.840.10045.4.3.1": "SHA224",
    "1.2.840.10045.4.3.2": "SHA256",
    "1.2.840.10045.4.3.3": "SHA384",
    "1.2.840.10045.4.3.4": "SHA512",
}
_OID_RSA_PSS = "1.2.840.113549.1.1.10"
_OID_ED25519 = "1.3.101.112"
_OID_ED448 = "1.3.101.113"


class X509Error(ValueError):
    """A certificate, CRL or PEM block could not be parsed."""


# ------------------------------------------------------------------ DER
def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the element at ``pos``."""
    if pos + 2 > end:
        raise X509Error("truncated DER element")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise X509Error("multi-byte DER tags are not used in certificates")
    n = data[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 4 or pos + k > end:
            raise X509Error("bad DER length")
        n = int.from_bytes(data[pos : pos + k], "big")
        pos += k
    if pos + n > end:
        raise X509Error("DER element runs past its container")
    return tag, pos, pos + n


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """The elements inside a constructed element: (tag, content start, content end, element start)."""
    out = []
    pos = start
    while pos < end:
        tag, s, e = _tlv(data, pos, end)
        out.append((tag, s, e, pos))
        pos = e
    return out


def _oid(raw: bytes) -> str:
    if not raw:
        raise X509Error("empty OID")
    first = raw[0]
    parts = [str(min(first // 40, 2)), str(first - 40 * min(first // 40, 2))]
    value = 0
    for b in raw[1:]:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(str(value))
            value = 0
    return ".".join(parts)


def _time(tag: int, raw: bytes) -> float:
    text = raw.decode("ascii", "replace")
    try:
        if tag == 0x17:  # UTCTime YYMMDDHHMM[SS]Z
            year = int(text[0:2])
            year += 1900 if year >= 50 else 2000
            rest = text[2:]
        elif tag == 0x18:  # GeneralizedTime YYYYMMDDHHMMSS[.f]Z
            year = int(text[0:4])
            rest = text[4:]
        else:
            raise X509Error("bad time type")
        month, day, hour, minute = int(rest[0:2]), int(rest[2:4]), int(rest[4:6]), int(rest[6:8])
        second = int(rest[8:10]) if len(rest) >= 11 and rest[8:10].isdigit() else 0
        return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))
    except (ValueError, IndexError):
        raise X509Error("bad certificate time") from None


def _pem_blocks(data: bytes, label: bytes) -> list[bytes]:
    begin = b"-----BEGIN " + label + b"-----"
    end = b"-----END " + label + b"-----"
    out: list[bytes] = []
    pos = 0
    while True:
        i = data.find(begin, pos)
        if i < 0:
            return out
        j = data.find(end, i)
        if j < 0:
            raise X509Error(f"unterminated PEM {label.decode()} block")
        body = data[i + len(begin) : j]
        try:
            out.append(binascii.a2b_base64(b"".join(body.split())))
        except binascii.Error:
            raise X509Error("bad base64 in PEM block") from None
        pos = j + len(end)


class _Signed:
    """The common outer shape: SEQUENCE { tbs, algorithm, BIT STRING signature }."""

    __slots__ = ("der", "tbs", "sig_oid", "sig_params", "signature")

    def __init__(self, der: bytes) -> None:
        self.der = der
        tag, s, e = _tlv(der, 0, len(der))
        if tag != 0x30:
            raise X509Error("not a DER SEQUENCE")
        parts = _children(der, s, e)
        if len(parts) != 3 or parts[0][0] != 0x30 or parts[1][0] != 0x30 or parts[2][0] != 0x03:
            raise X509Error("not a signed X.509 structure")
        self.tbs = der[parts[0][3] : parts[0][2]]
        alg = _children(der, parts[1][1], parts[1][2])
        if not alg or alg[0][0] != 0x06:
            raise X509Error("bad signature algorithm")
        self.sig_oid = _oid(der[alg[0][1] : alg[0][2]])
        self.sig_params = der[alg[1][3] : alg[1][2]] if len(alg) > 1 else b""
        bits = der[parts[2][1] : parts[2][2]]
        if not bits or bits[0] != 0:
            raise X509Error("bad signature bit string")
        self.signature = bits[1:]


class Cert(_Signed):
    """One parsed certificate (see the module docstring)."""

    __slots__ = (
        "serial",
        "issuer",
        "subject",
        "not_before",
        "not_after",
        "spki",
        "key_oid",
        "key_bits",
        "extensions",
        "subject_cns",
    )

    def __init__(self, der: bytes) -> None:
        super().__init__(der)
        tbs = self.tbs
        _, s, e = _tlv(tbs, 0, len(tbs))
        items = _children(tbs, s, e)
        if items and items[0][0] == 0xA0:  # [0] version
            items = items[1:]
        if len(items) < 6:
            raise X509Error("truncated TBSCertificate")
        serial, _sig, issuer, validity, subject, spki = items[:6]
        if serial[0] != 0x02:
            raise X509Error("bad serial number")
        self.serial = int.from_bytes(tbs[serial[1] : serial[2]], "big", signed=True)
        self.issuer = tbs[issuer[3] : issuer[2]]
        self.subject = tbs[subject[3] : subject[2]]
        times = _children(tbs, validity[1], validity[2])
        if len(times) != 2:
            raise X509Error("bad validity")
        self.not_before = _time(times[0][0], tbs[times[0][1] : times[0][2]])
        self.not_after = _time(times[1][0], tbs[times[1][1] : times[1][2]])
        self.spki = tbs[spki[3] : spki[2]]
        key_alg = _children(tbs, spki[1], spki[2])
        alg = _children(tbs, key_alg[0][1], key_alg[0][2])
        self.key_oid = _oid(tbs[alg[0][1] : alg[0][2]])
        self.key_bits = tbs[key_alg[1][1] + 1 : key_alg[1][2]]
        self.extensions: dict[str, tuple[bool, bytes]] = {}
        for tag, cs, ce, _start in items[6:]:
            if tag != 0xA3:  # [3] extensions
                continue
            _, xs, xe = _tlv(tbs, cs, ce)
            for _t, es, ee, _st in _children(tbs, xs, xe):
                fields = _children(tbs, es, ee)
                oid = _oid(tbs[fields[0][1] : fields[0][2]])
                critical = False
                if len(fields) == 3 and fields[1][0] == 0x01:
                    critical = tbs[fields[1][1] : fields[1][2]] != b"\x00"
                value = fields[-1]
                if value[0] != 0x04:
                    raise X509Error("bad extension value")
                self.extensions[oid] = (critical, tbs[value[1] : value[2]])
        self.subject_cns = _name_values(self.subject, _OID_CN)

    # gnutls_x509_crt_get_basic_constraints: True (CA), False, None (absent)
    @property
    def is_ca(self) -> Optional[bool]:
        ext = self.extensions.get(_OID_BASIC_CONSTRAINTS)
        if ext is None:
            return None
        raw = ext[1]
        _, s, e = _tlv(raw, 0, len(raw))
        for tag, cs, ce, _start in _children(raw, s, e):
            if tag == 0x01:
                return raw[cs:ce] != b"\x00"
        return False

    @property
    def key_usage(self) -> Optional[tuple[int, bool]]:
        """(gnutls usage bits, critical), None without the extension."""
        ext = self.extensions.get(_OID_KEY_USAGE)
        if ext is None:
            return None
        raw = ext[1]
        tag, s, e = _tlv(raw, 0, len(raw))
        if tag != 0x03 or e - s < 1:
            raise X509Error("bad key usage")
        bits = raw[s + 1 : e]
        usage = bits[0] if bits else 0
        if len(bits) > 1 and bits[1] & 0x80:
            usage |= KEY_DECIPHER_ONLY
        return usage, ext[0]

    @property
    def key_purposes(self) -> Optional[tuple[list[str], bool]]:
        """(purpose OIDs, critical), None without the extension."""
        ext = self.extensions.get(_OID_EXT_KEY_USAGE)
        if ext is None:
            return None
        raw = ext[1]
        _, s, e = _tlv(raw, 0, len(raw))
        return [_oid(raw[cs:ce]) for tag, cs, ce, _st in _children(raw, s, e) if tag == 0x06], ext[0]

    @property
    def alt_names(self) -> list[tuple[int, bytes]]:
        """subjectAltName entries as (context tag number, raw value)."""
        ext = self.extensions.get(_OID_SAN)
        if ext is None:
            return []
        raw = ext[1]
        _, s, e = _tlv(raw, 0, len(raw))
        return [(tag & 0x1F, raw[cs:ce]) for tag, cs, ce, _st in _children(raw, s, e)]

    def __repr__(self) -> str:
        return f"<Cert serial={self.serial:x} cns={self.subject_cns}>"


class Crl(_Signed):
    """One parsed certificate revocation list."""

    __slots__ = ("issuer", "revoked")

    def __init__(self, der: bytes) -> None:
        super().__init__(der)
        tbs = self.tbs
        _, s, e = _tlv(tbs, 0, len(tbs))
        items = _children(tbs, s, e)
        if items and items[0][0] == 0x02:  # version
            items = items[1:]
        if len(items) < 3:
            raise X509Error("truncated TBSCertList")
        self.issuer = tbs[items[1][3] : items[1][2]]
        self.revoked: set[int] = set()
        for tag, cs, ce, _start in items[3:]:
            if tag != 0x30:
                continue  # nextUpdate (a time) or [0] extensions
            for _t, es, ee, _st in _children(tbs, cs, ce):
                entry = _children(tbs, es, ee)
                if entry and entry[0][0] == 0x02:
                    self.revoked.add(int.from_bytes(tbs[entry[0][1] : entry[0][2]], "big", signed=True))


def _name_values(name: bytes, oid: str) -> list[str]:
    """The values of attribute ``oid`` in a DER Name, in order."""
    out: list[str] = []
    _, s, e = _tlv(name, 0, len(name))
    for _t, rs, re_, _st in _children(name, s, e):  # RDN SETs
        for _t2, as_, ae, _st2 in _children(name, rs, re_):  # AttributeTypeAndValue
            fields = _children(name, as_, ae)
            if len(fields) == 2 and _oid(name[fields[0][1] : fields[0][2]]) == oid:
                tag = fields[1][0]
                raw = name[fields[1][1] : fields[1][2]]
                if tag == 0x1E:  # BMPString
                    out.append(raw.decode("utf-16-be", "replace"))
                else:
                    out.append(raw.decode("utf-8", "replace"))
    return out


def cert_from_der(der: bytes) -> Cert:
    return Cert(bytes(der))


def load_pem_certs(data: bytes, limit: int = 0) -> list[Cert]:
    """Every ``CERTIFICATE`` block of a PEM file (at most ``limit`` when set)."""
    blocks = _pem_blocks(data, b"CERTIFICATE")
    if limit:
        blocks = blocks[:limit]
    return [Cert(b) for b in blocks]


def load_pem_crls(data: bytes) -> list[Crl]:
    return [Crl(b) for b in _pem_blocks(data, b"X509 CRL")]


# ------------------------------------------------------------ hostnames
def _label_compare(certname: str, hostname: str) -> bool:
    return certname.lower() == hostname.lower()


def _hostname_compare(certname: str, hostname: str) -> bool:
    """GnuTLS's _gnutls_hostname_compare."""
    if any(not (0x20 <= ord(c) < 0x7F) for c in certname):
        return False
    if certname.startswith("*"):
        last = certname.rfind(".")
        if last < 0 or certname.find(".") == last or last == len(certname) - 1:
            return False  # a wildcard needs at least two labels after it
        rest = certname[1:]
        i = 0
        while True:
            if _label_compare(rest, hostname[i:]):
                return True
            if i >= len(hostname) or hostname[i] == ".":
                return False
            i += 1
    return _label_compare(certname, hostname)


def _ip_bytes(hostname: str) -> Optional[bytes]:
    try:
        return ipaddress.ip_address(hostname).packed
    except ValueError:
        return None


def check_hostname(cert: Cert, hostname: str) -> bool:
    """gnutls_x509_crt_check_hostname (see the module docstring)."""
    names = cert.alt_names
    ip = _ip_bytes(hostname)
    if ip is not None:
        for tag, raw in names:
            if tag == 7 and raw == ip:
                return True
        # GnuTLS then compares the text of the address with the DNS names,
        # for servers that put their IP there
    found_dns = False
    other_address = False
    for tag, raw in names:
        if tag == 2:
            found_dns = True
            if b"\0" in raw:
                continue
            if _hostname_compare(raw.decode("latin-1"), hostname):
                return True
        elif tag == 7:
            other_address = True
    if found_dns or other_address:
        return False
    purposes = cert.key_purposes
    if purposes is not None and not any(p in (KP_TLS_WWW_SERVER, KP_ANY) for p in purposes[0]):
        return False  # the CN names a TLS server only in a certificate fit for one
    cns = cert.subject_cns
    if len(cns) != 1 or "\0" in cns[0]:
        return False
    return _hostname_compare(cns[0], hostname)


# ----------------------------------------------------------- signatures
def _rsa_public_numbers(spki_key: bytes) -> tuple[int, int]:
    _, s, e = _tlv(spki_key, 0, len(spki_key))
    fields = _children(spki_key, s, e)
    if len(fields) != 2:
        raise X509Error("bad RSA public key")
    n = int.from_bytes(spki_key[fields[0][1] : fields[0][2]], "big")
    exp = int.from_bytes(spki_key[fields[1][1] : fields[1][2]], "big")
    return n, exp


def verify_signature(issuer: Cert, signed: _Signed) -> bool:
    """Did ``issuer``'s key make ``signed``'s signature?"""
    oid = signed.sig_oid
    pkcs1 = _RSA_PKCS1.get(oid)
    if pkcs1 is not None and issuer.key_oid == _OID_RSA:
        n, e = _rsa_public_numbers(issuer.key_bits)
        k = (n.bit_length() + 7) // 8
        s = int.from_bytes(signed.signature, "big")
        if len(signed.signature) != k or s >= n:
            return False
        em = pow(s, e, n).to_bytes(k, "big")
        name, prefix = pkcs1
        digest = hashlib.new(name, signed.tbs).digest()
        t = prefix + digest
        if k < len(t) + 11:
            return False
        expected = b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t
        return hmac.compare_digest(em, expected)
    return _verify_with_cryptography(issuer, signed)


def _verify_with_cryptography(issuer: Cert, signed: _Signed) -> bool:
    # Rare algorithms: imported here only (cryptography costs ~70 ms to import).
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    try:
        key = load_der_public_key(issuer.spki)
        oid = signed.sig_oid
        if oid in _ECDSA_HASHES and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signed.signature, signed.tbs, ec.ECDSA(getattr(hashes, _ECDSA_HASHES[oid])()))
        elif oid in (_OID_ED25519, _OID_ED448) and isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(signed.signature, signed.tbs)
        elif oid == _OID_RSA_PSS and isinstance(key, rsa.RSAPublicKey):
            algo = _pss_hash(signed.sig_params)
            key.verify(
                signed.signature,
                signed.tbs,
                padding.PSS(mgf=padding.MGF1(algo), salt_length=padding.PSS.AUTO),
                algo,
            )
        else:
            return False
    except (InvalidSignature, ValueError, TypeError, X509Error):
        return False
    return True


def _pss_hash(params: bytes) -> HashAlgorithm:
    from cryptography.hazmat.primitives import hashes

    names: dict[str, Callable[[], HashAlgorithm]] = {
        "2.16.840.1.101.3.4.2.1": hashes.SHA256,
        "2.16.840.1.101.3.4.2.2": hashes.SHA384,
        "2.16.840.1.101.3.4.2.3": hashes.SHA512,
        "1.3.14.3.2.26": hashes.SHA1,
    }
    if params:
        _, s, e = _tlv(params, 0, len(params))
        for tag, cs, ce, _st in _children(params, s, e):
            if tag == 0xA0:  # [0] hashAlgorithm
                _, hs, he = _tlv(params, cs, ce)
                alg = _children(params, hs, he)
                cls = names.get(_oid(params[alg[0][1] : alg[0][2]]))
                if cls is None:
                    raise X509Error("unsupported RSA-PSS hash")
                return cls()
    return hashes.SHA1()


def issuer_status(cert: Cert, cas: Sequence[Cert]) -> int:
    """gnutls_x509_crt_list_verify's status for ``cert`` against ``cas`` (0: trusted)."""
    candidates = [ca for ca in cas if ca.subject == cert.issuer]
    if not candidates:
        return CERT_INVALID | CERT_SIGNER_NOT_FOUND
    for ca in candidates:
        if verify_signature(ca, cert):
            if cert.sig_oid in _INSECURE_SIGNATURES:
                return CERT_INVALID | CERT_INSECURE_ALGORITHM
            return 0
    return CERT_INVALID | CERT_SIGNATURE_FAILURE


def revoked(cert: Cert, crls: Sequence[Crl], cas: Sequence[Cert]) -> bool:
    """Is ``cert`` listed in a CRL its issuer signed?"""
    for crl in crls:
        if crl.issuer != cert.issuer or cert.serial not in crl.revoked:
            continue
        if any(ca.subject == crl.issuer and verify_signature(ca, crl) for ca in cas):
            return True
    return False
